"""gslora: continual forgetting for pre-trained vision transformers (GS-LoRA, GS-LoRA++).

The public API::

    from gslora import ForgetConfig, SequenceConfig, run_forgetting
    manifest = run_forgetting(ForgetConfig(checkpoint="base/", sequence=SequenceConfig(requests=[["Bag"]])), "run/")

Names are imported on first use, so ``import gslora`` (and ``gslora --help``) does not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

from gslora.version import __version__ as __version__

_EXPORTS = {
    "DataConfig": "gslora.config", "ModelConfig": "gslora.config", "SequenceConfig": "gslora.config",
    "TrainConfig": "gslora.config", "PretrainConfig": "gslora.config",
    "GSLoRAError": "gslora.errors", "NonFiniteLossError": "gslora.errors",
    "load_dataset": "gslora.data",
    "ForgetConfig": "gslora.engine", "pretrain": "gslora.engine", "read_manifest": "gslora.engine",
    "resume_config": "gslora.engine", "run_forgetting": "gslora.engine", "run_pretraining": "gslora.engine",
    "METHODS": "gslora.methods", "Method": "gslora.methods",
    "VisionClassifier": "gslora.models", "build_model": "gslora.models", "load_checkpoint": "gslora.models",
    "save_checkpoint": "gslora.models",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gslora' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
