"""Build vision transformers of three families behind one interface, without network by default.

``VisionClassifier`` wraps a timm, torchvision or Hugging Face ViT: it takes uint8 (or float)
images of any size and channel count, adapts them to what the network expects, and returns logits
(``forward``) or the embedding the head reads (``embed``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from gslora.config import ModelConfig
from gslora.errors import GSLoRAError
from gslora.models.families import FAMILIES, Family
from gslora.models.heads import CosFaceHead
from gslora.models.weights import load_weights

log = logging.getLogger(__name__)


class VisionClassifier(nn.Module):
    """A ViT classifier with input adaptation and a pluggable head.

    With ``config.head == "linear"`` the family's own head is used; with ``"cosface"`` it is replaced
    by a ``CosFaceHead`` on the embedding (the face-recognition set-up of the reference).

    Args:
        net: the family's model (timm ``VisionTransformer``, torchvision ``VisionTransformer``,
            transformers ``ViTForImageClassification``).
        config: the config it was built from.
        in_chans: channels the network's patch embedding takes.
        embed_dim: size of the embedding the head reads.
    """

    def __init__(self, net: nn.Module, config: ModelConfig, *, in_chans: int, embed_dim: int,
                 family: Family | None = None) -> None:
        super().__init__()
        self.net = net
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.family: Family = family or FAMILIES.get(config.family)()
        if config.mean is None or config.std is None or config.interpolation is None:
            own = self.family.preprocessing(net, config)  # the model's own, recorded in the config
            mean, std = own.get("mean", 0.5), own.get("std", 0.5)
            if isinstance(mean, list) and len(mean) != in_chans:  # an RGB model made grey: one value
                mean, std = sum(mean) / len(mean), sum(std) / len(std)
            config = replace(config, mean=mean if config.mean is None else config.mean,
                             std=std if config.std is None else config.std,
                             interpolation=config.interpolation or own.get("interpolation", "bilinear"))
        for name in ("mean", "std"):
            value = getattr(config, name)
            if isinstance(value, list) and len(value) != in_chans:
                raise GSLoRAError(f"model.{name} has {len(value)} values but the model takes {in_chans} channel(s); "
                                  f"give one value or {in_chans}")
        self.config = config
        self.head: CosFaceHead | None = None
        if config.head == "cosface":
            self.family.drop_head(net)
            self.head = CosFaceHead(embed_dim, config.num_classes, s=config.cosface_s, m=config.cosface_m)

    @property
    def has_margin(self) -> bool:
        """Whether the logits depend on the label (a margin head): then accuracy has two readings."""
        return self.head is not None and self.head.m != 0

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float (N, C, H, W) -> normalised float at the model's size and channel count."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.in_chans:  # grey <-> colour: average the channels, then repeat them
            x = x.mean(dim=1, keepdim=True).expand(-1, self.in_chans, -1, -1)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            mode = self.config.interpolation or "bilinear"
            x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "nearest" else
                                                                  {"align_corners": False, "antialias": True}))
        mean, std = self.config.mean, self.config.std
        if isinstance(mean, list) or isinstance(std, list):
            mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, C); with ``labels`` a margin head penalises the true class (training, margin accuracy)."""
        return self.forward_features(images, labels)[0]

    def forward_features(self, images: torch.Tensor,
                         labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, C), embedding (N, D)) in one pass."""
        embedding = self._embed(self.prepare(images))
        return self.classify(embedding, labels), embedding

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The (N, D) embedding the head reads (for faces: the CLS token after the final LayerNorm)."""
        return self._embed(self.prepare(images))

    def head_module(self) -> nn.Module:
        """The module that maps the embedding to logits (frozen by the full-fine-tuning baselines)."""
        return self.head if self.head is not None else self.family.head(self.net)

    def classify(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.head is not None:
            return self.head(embedding, labels)
        return self.family.classify(self.net, embedding)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.embed(self.net, x)


def build_model(config: ModelConfig) -> VisionClassifier:
    """Build the model ``config`` describes and load ``config.weights`` if set.

    Raises:
        GSLoRAError: unknown family or name, or weights that do not fit the model.
    """
    family = FAMILIES.get(config.family)()
    net, in_chans, embed_dim = family.build(config)
    model = VisionClassifier(net, config, in_chans=in_chans, embed_dim=embed_dim, family=family)
    if config.weights:
        load_weights(model, config.weights, replace_head=config.replace_head)
    return model
