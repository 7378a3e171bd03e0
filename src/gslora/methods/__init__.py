"""Forgetting methods, one file each, registered by name in ``METHODS``."""

from gslora.methods.base import METHODS, Method, TaskContext
from gslora.methods.gs_lora import GSLoRA, GSLoRAConfig
from gslora.methods.gs_lora_pp import GSLoRAPP, GSLoRAPPConfig

__all__ = ["METHODS", "GSLoRA", "GSLoRAConfig", "GSLoRAPP", "GSLoRAPPConfig", "Method", "TaskContext"]
