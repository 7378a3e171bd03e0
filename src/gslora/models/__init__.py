"""Model builders (timm, torchvision, Hugging Face) and checkpoint I/O."""

from gslora.models.builders import FAMILIES, VisionClassifier, build_model
from gslora.models.checkpoint import load_checkpoint, load_weights, read_checkpoint_meta, save_checkpoint

__all__ = ["FAMILIES", "VisionClassifier", "build_model", "load_checkpoint", "load_weights",
           "read_checkpoint_meta", "save_checkpoint"]
