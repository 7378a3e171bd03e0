"""Build vision transformers of three families behind one interface, without network by default.

``VisionClassifier`` wraps a timm, torchvision or Hugging Face ViT: it takes uint8 (or float)
images of any size and channel count, adapts them to what the network expects, and returns logits
(``forward``) or the embedding the head reads (``embed``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from gslora.config import ModelConfig
from gslora.errors import GSLoRAError
from gslora.models.heads import CosFaceHead
from gslora.models.stems import ConvStem
from gslora.registry import Registry

log = logging.getLogger(__name__)

FAMILIES: Registry = Registry("model family")


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

    def __init__(self, net: nn.Module, config: ModelConfig, *, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.head: CosFaceHead | None = None
        if config.head == "cosface":
            _drop_family_head(net, config.family)
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
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.config.mean) / self.config.std

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
        if self.head is not None:
            return self.head
        return {"timm": lambda: self.net.head, "torchvision": lambda: self.net.heads,
                "hf": lambda: self.net.classifier}[self.config.family]()

    def classify(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.head is not None:
            return self.head(embedding, labels)
        family = self.config.family
        if family == "timm":
            return self.net.head(embedding)
        if family == "torchvision":
            return self.net.heads(embedding)
        return self.net.classifier(embedding)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        family = self.config.family
        if family == "timm":
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        if family == "torchvision":
            tokens = self.net._process_input(x)
            cls = self.net.class_token.expand(tokens.shape[0], -1, -1)
            return self.net.encoder(torch.cat([cls, tokens], dim=1))[:, 0]
        return self.net.vit(pixel_values=x).last_hidden_state[:, 0]


def build_model(config: ModelConfig) -> VisionClassifier:
    """Build the model ``config`` describes and load ``config.weights`` if set.

    Raises:
        GSLoRAError: unknown family or name, or weights that do not fit the model.
    """
    net, in_chans, embed_dim = FAMILIES.get(config.family)(config)
    model = VisionClassifier(net, config, in_chans=in_chans, embed_dim=embed_dim)
    if config.weights:
        from gslora.models.checkpoint import load_weights

        load_weights(model, config.weights)
    return model


def _drop_family_head(net: nn.Module, family: str) -> None:
    if family == "timm":
        net.reset_classifier(0)
    elif family == "torchvision":
        net.heads = nn.Identity()
    else:
        net.classifier = nn.Identity()


@FAMILIES.register("timm")
def build_timm(config: ModelConfig) -> tuple[nn.Module, int, int]:
    import timm

    shape = {"img_size": config.image_size, "in_chans": config.in_chans, "num_classes": config.num_classes,
             "drop_path_rate": config.drop_path}
    if config.name is None:
        if config.stem == "conv":
            shape["embed_layer"] = ConvStem
        net = timm.create_model("vit_base_patch16_224", pretrained=False, patch_size=config.patch_size,
                                embed_dim=config.width, depth=config.depth, num_heads=config.heads,
                                mlp_ratio=config.mlp_ratio, **shape)
    else:
        try:
            net = timm.create_model(config.name, pretrained=config.pretrained, **shape)
        except RuntimeError as exc:
            raise GSLoRAError(f"timm cannot build model.name={config.name!r}: {exc}") from exc
    return net, config.in_chans, net.num_features


@FAMILIES.register("torchvision")
def build_torchvision(config: ModelConfig) -> tuple[nn.Module, int, int]:
    from torchvision import models
    from torchvision.models.vision_transformer import VisionTransformer

    if config.name is None:
        net = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size,
                                num_layers=config.depth, num_heads=config.heads, hidden_dim=config.width,
                                mlp_dim=int(config.width * config.mlp_ratio), num_classes=config.num_classes)
    else:
        if config.name not in models.list_models(module=models):
            raise GSLoRAError(f"torchvision has no model {config.name!r}; try vit_b_16, vit_b_32, vit_l_16")
        weights = "DEFAULT" if config.pretrained else None
        net = models.get_model(config.name, weights=weights, image_size=config.image_size) if weights is None \
            else models.get_model(config.name, weights=weights)
        if net.heads.head.out_features != config.num_classes:
            net.heads.head = nn.Linear(net.heads.head.in_features, config.num_classes)
    return net, 3, net.hidden_dim  # torchvision's patch embedding takes RGB


@FAMILIES.register("hf")
def build_hf(config: ModelConfig) -> tuple[nn.Module, int, int]:
    from transformers import ViTConfig, ViTForImageClassification

    if config.hf_config is not None:
        hf_config = ViTConfig.from_dict(config.hf_config)
        hf_config.num_labels = config.num_classes
        net = ViTForImageClassification(hf_config)
    elif config.name is None or not config.pretrained:
        if config.name is not None:
            hf_config = ViTConfig.from_pretrained(config.name, num_labels=config.num_classes)
        else:
            hf_config = ViTConfig(hidden_size=config.width, num_hidden_layers=config.depth,
                                  num_attention_heads=config.heads,
                                  intermediate_size=int(config.width * config.mlp_ratio),
                                  image_size=config.image_size, patch_size=config.patch_size,
                                  num_channels=config.in_chans, num_labels=config.num_classes)
        net = ViTForImageClassification(hf_config)
    else:
        net = ViTForImageClassification.from_pretrained(config.name, num_labels=config.num_classes,
                                                        ignore_mismatched_sizes=True)
    return net, net.config.num_channels, net.config.hidden_size
