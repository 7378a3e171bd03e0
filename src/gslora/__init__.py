"""gslora: continual forgetting for pre-trained vision transformers (GS-LoRA, GS-LoRA++).

The public API::

    from gslora import ForgetConfig, run_forgetting
    manifest = run_forgetting(ForgetConfig(checkpoint="base/", sequence=SequenceConfig(requests=[["Bag"]])), "run/")
"""

__version__ = "0.1.0"

from gslora.config import DataConfig, ModelConfig, SequenceConfig, TrainConfig  # noqa: E402
from gslora.data import load_dataset  # noqa: E402
from gslora.engine import ForgetConfig, pretrain, read_manifest, resume_config, run_forgetting  # noqa: E402
from gslora.errors import GSLoRAError, NonFiniteLossError  # noqa: E402
from gslora.methods import METHODS, Method  # noqa: E402
from gslora.models import VisionClassifier, build_model, load_checkpoint, save_checkpoint  # noqa: E402

__all__ = [
    "METHODS", "DataConfig", "ForgetConfig", "GSLoRAError", "Method", "ModelConfig", "NonFiniteLossError",
    "SequenceConfig", "TrainConfig", "VisionClassifier", "__version__", "build_model", "load_checkpoint",
    "load_dataset", "pretrain", "read_manifest", "resume_config", "run_forgetting", "save_checkpoint",
]
