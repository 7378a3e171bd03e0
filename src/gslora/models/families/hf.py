"""Hugging Face transformers image classifiers (``AutoModelForImageClassification``): ViT, DeiT, BEiT, Swin,
Swin-V2, DINOv2, ... by hub id, from a local directory, from a saved config, or a ViT by shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gslora.models.families.base import (
    FAMILIES,
    Family,
    embed_through_head,
    require_hub,
    require_patch_stem,
    unreachable_weights,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gslora.config import ModelConfig


@FAMILIES.register("hf")
class HuggingFace(Family):
    def build(self, config: ModelConfig) -> tuple[nn.Module, int, int]:
        require_patch_stem(config)
        from transformers import AutoConfig, AutoModelForImageClassification, ViTConfig

        extra: dict[str, Any] = dict(config.kwargs or {})
        if config.hf_config is not None:
            saved = dict(config.hf_config)
            hf_config = AutoConfig.for_model(saved.pop("model_type", "vit"), **saved)
        elif config.name is None:
            hf_config = ViTConfig(hidden_size=config.width, num_hidden_layers=config.depth,
                                  num_attention_heads=config.heads,
                                  intermediate_size=int(config.width * config.mlp_ratio),
                                  image_size=config.image_size, patch_size=config.patch_size,
                                  num_channels=config.in_chans, **extra)
        else:
            if not Path(config.name).exists():
                require_hub(config.name, "huggingface.co")
            try:
                if config.pretrained:
                    net = AutoModelForImageClassification.from_pretrained(
                        config.name, num_labels=config.num_classes, ignore_mismatched_sizes=True, **extra)
                    return net, _channels(net.config), self.head(net).in_features
                hf_config = AutoConfig.from_pretrained(config.name, **extra)
            except Exception as exc:  # OSError offline; hub and http libraries raise their own types
                raise unreachable_weights(config.name, exc) from exc
        hf_config.num_labels = config.num_classes
        hf_config.architectures = hf_config.architectures or []  # DeiT (several heads) takes its first
        net = AutoModelForImageClassification.from_config(hf_config)
        return net, _channels(net.config), self.head(net).in_features

    def head(self, net: nn.Module) -> nn.Module:
        return net.classifier

    def drop_head(self, net: nn.Module) -> None:
        from torch import nn

        net.classifier = nn.Identity()

    def preprocessing(self, net: nn.Module, config: ModelConfig) -> dict[str, Any]:
        """A local model directory's image processor (``preprocessor_config.json``); none offline otherwise."""
        if config.name is None or not (Path(config.name) / "preprocessor_config.json").is_file():
            return {}
        processor = json.loads((Path(config.name) / "preprocessor_config.json").read_text())
        mean, std = processor.get("image_mean"), processor.get("image_std")
        out: dict[str, Any] = {}
        if mean is not None and std is not None:
            out.update(mean=[float(v) for v in mean], std=[float(v) for v in std])
        if processor.get("resample") in PIL_RESAMPLE:  # PIL's filter numbers
            out["interpolation"] = PIL_RESAMPLE[processor["resample"]]
        return out

    def embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return embed_through_head(net, self.head(net), lambda: net(pixel_values=x))

    def saved_config(self, net: nn.Module) -> dict[str, Any]:
        return {"hf_config": net.config.to_dict()}  # rebuilds offline, whatever the name


PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _channels(config: Any) -> int:
    """Input channels of a transformers config (a CLIP-style config keeps them in its vision config)."""
    vision = getattr(config, "vision_config", None)
    return int(getattr(config, "num_channels", None) or getattr(vision, "num_channels", 3))
