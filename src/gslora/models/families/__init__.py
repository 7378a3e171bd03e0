"""Model families: one registered ``Family`` per library (timm, torchvision, Hugging Face transformers).

A family supplies everything ``VisionClassifier`` needs from its networks: ``build`` (a network from a
``ModelConfig``, offline unless ``pretrained``), ``head`` (the module mapping the embedding to logits),
``drop_head`` (for a CosFace head), ``embed`` (the embedding the head reads). Adding a family is one file
here and its import below.
"""

from gslora.models.families import hf, timm, torchvision  # noqa: F401,E402  (registers the families)
from gslora.models.families.base import FAMILIES, Family

__all__ = ["FAMILIES", "Family"]
