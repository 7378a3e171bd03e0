"""Model builders (timm, torchvision, Hugging Face) and checkpoint I/O."""

from gslora.models.builders import VisionClassifier, build_model
from gslora.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from gslora.models.families import FAMILIES, Family
from gslora.models.modes import evaluating
from gslora.models.weights import load_weights

__all__ = ["FAMILIES", "Family", "VisionClassifier", "build_model", "evaluating", "load_checkpoint", "load_weights",
           "read_checkpoint_meta", "save_checkpoint"]
