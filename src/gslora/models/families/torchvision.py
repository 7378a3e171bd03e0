"""torchvision ViTs: ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ... or a ``VisionTransformer`` by shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gslora.errors import GSLoRAError
from gslora.models.families.base import FAMILIES, Family, require_hub, require_patch_stem, unreachable_weights

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gslora.config import ModelConfig


@FAMILIES.register("torchvision")
class Torchvision(Family):
    def build(self, config: ModelConfig) -> tuple[nn.Module, int, int]:
        require_patch_stem(config)
        from torch import nn
        from torchvision import models
        from torchvision.models.vision_transformer import VisionTransformer

        if config.name is None:
            net = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size,
                                    num_layers=config.depth, num_heads=config.heads, hidden_dim=config.width,
                                    mlp_dim=int(config.width * config.mlp_ratio), num_classes=config.num_classes)
        else:
            if config.name not in models.list_models(module=models):
                raise GSLoRAError(f"torchvision has no model {config.name!r}; try vit_b_16, vit_b_32, vit_l_16")
            if config.pretrained:
                require_hub(config.name, "download.pytorch.org")
                try:
                    net = models.get_model(config.name, weights="DEFAULT")
                except Exception as exc:  # urllib's URLError (an OSError) offline, hash mismatches, ...
                    raise unreachable_weights(config.name, exc) from exc
            else:
                net = models.get_model(config.name, weights=None, image_size=config.image_size)
            if net.heads.head.out_features != config.num_classes:
                net.heads.head = nn.Linear(net.heads.head.in_features, config.num_classes)
        return net, 3, net.hidden_dim  # torchvision's patch embedding takes RGB

    def head(self, net: nn.Module) -> nn.Module:
        return net.heads

    def drop_head(self, net: nn.Module) -> None:
        from torch import nn

        net.heads = nn.Identity()

    def embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        import torch

        tokens = net._process_input(x)
        cls = net.class_token.expand(tokens.shape[0], -1, -1)
        return net.encoder(torch.cat([cls, tokens], dim=1))[:, 0]
