"""Hugging Face transformers ViTs (``ViTForImageClassification``): by hub id or by shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gslora.models.families.base import FAMILIES, Family, require_hub, require_patch_stem, unreachable_weights

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gslora.config import ModelConfig


@FAMILIES.register("hf")
class HuggingFace(Family):
    def build(self, config: ModelConfig) -> tuple[nn.Module, int, int]:
        require_patch_stem(config)
        from transformers import ViTConfig, ViTForImageClassification

        if config.hf_config is not None:
            hf_config = ViTConfig.from_dict(config.hf_config)
            hf_config.num_labels = config.num_classes
            net = ViTForImageClassification(hf_config)
        elif config.name is None:
            hf_config = ViTConfig(hidden_size=config.width, num_hidden_layers=config.depth,
                                  num_attention_heads=config.heads,
                                  intermediate_size=int(config.width * config.mlp_ratio),
                                  image_size=config.image_size, patch_size=config.patch_size,
                                  num_channels=config.in_chans, num_labels=config.num_classes)
            net = ViTForImageClassification(hf_config)
        else:
            require_hub(config.name, "huggingface.co")
            try:
                if not config.pretrained:
                    net = ViTForImageClassification(ViTConfig.from_pretrained(config.name,
                                                                              num_labels=config.num_classes))
                else:
                    net = ViTForImageClassification.from_pretrained(config.name, num_labels=config.num_classes,
                                                                    ignore_mismatched_sizes=True)
            except Exception as exc:  # OSError offline; hub and http libraries raise their own types
                raise unreachable_weights(config.name, exc) from exc
        return net, net.config.num_channels, net.config.hidden_size

    def head(self, net: nn.Module) -> nn.Module:
        return net.classifier

    def drop_head(self, net: nn.Module) -> None:
        from torch import nn

        net.classifier = nn.Identity()

    def embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net.vit(pixel_values=x).last_hidden_state[:, 0]
