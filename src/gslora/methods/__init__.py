"""Forgetting methods, one file each, registered by name in ``METHODS``."""

from gslora.methods.base import METHODS, Method, TaskContext
from gslora.methods.gs_lora import GSLoRA, GSLoRAConfig

__all__ = ["METHODS", "GSLoRA", "GSLoRAConfig", "Method", "TaskContext"]
