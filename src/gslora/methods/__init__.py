"""Forgetting methods, one file each, registered by name in ``METHODS``.

GS-LoRA and GS-LoRA++ train LoRA adapters; the baselines (``finetune.py`` and one file each) fine-tune
the backbone with the head frozen, as in the reference, on the same engine loop.
"""

from gslora.methods.anchored import EWC, L2, MAS, Anchored, AnchoredConfig
from gslora.methods.base import METHODS, Method, TaskContext, build_method, resolved_spec, variant_of
from gslora.methods.der import DER, DERPP, DERConfig
from gslora.methods.fdr import FDR, FDRConfig
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod, kd_loss
from gslora.methods.gs_lora import GSLoRA, GSLoRAConfig
from gslora.methods.gs_lora_pp import GSLoRAPP, GSLoRAPPConfig
from gslora.methods.lirf import LIRF, LIRFConfig
from gslora.methods.lwf import LwF, LwFConfig
from gslora.methods.neggrad import GradientAscent, NegGradConfig, NegGradPlus
from gslora.methods.random_label import RandomLabel
from gslora.methods.retrain import Retrain
from gslora.methods.salun import SalUn, SalUnConfig
from gslora.methods.scrub import SCRUB, SCRUBS, SCRUBConfig
from gslora.methods.ssd import SSD, SSDConfig

__all__ = ["DER", "DERPP", "EWC", "FDR", "L2", "LIRF", "MAS", "METHODS", "SCRUB", "SCRUBS", "SSD", "Anchored",
           "AnchoredConfig", "DERConfig", "FDRConfig", "FineTuneConfig", "FineTuneMethod", "GSLoRA", "GSLoRAConfig",
           "GSLoRAPP", "GSLoRAPPConfig", "GradientAscent", "LIRFConfig", "LwF", "LwFConfig", "Method",
           "NegGradConfig", "NegGradPlus", "RandomLabel", "Retrain", "SCRUBConfig", "SSDConfig", "SalUn",
           "SalUnConfig", "TaskContext", "build_method", "kd_loss", "resolved_spec", "variant_of"]
