"""torchvision classifiers: ViTs (``vit_b_16``, ``vit_l_16``, ... or a ``VisionTransformer`` by shape) and Swin
(``swin_t``, ``swin_v2_t``, ...); any ``torchvision.models`` classifier builds, and gslora adapts those whose blocks
hold attention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gslora.config import INTERPOLATIONS
from gslora.errors import GSLoRAError
from gslora.models.families.base import (
    FAMILIES,
    Family,
    embed_through_head,
    last_linear,
    replace_module,
    require_hub,
    require_patch_stem,
    unreachable_weights,
)

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

        extra: dict[str, Any] = dict(config.kwargs or {})
        if config.name is None:
            net = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size,
                                    num_layers=config.depth, num_heads=config.heads, hidden_dim=config.width,
                                    mlp_dim=int(config.width * config.mlp_ratio), num_classes=config.num_classes,
                                    **extra)
        else:
            if config.name not in models.list_models(module=models):
                raise GSLoRAError(f"torchvision has no model {config.name!r}; try vit_b_16, vit_l_16, swin_t, "
                                  "swin_v2_t")
            if config.pretrained:
                require_hub(config.name, "download.pytorch.org")
                try:
                    net = models.get_model(config.name, weights="DEFAULT", **extra)
                except Exception as exc:  # urllib's URLError (an OSError) offline, hash mismatches, ...
                    raise unreachable_weights(config.name, exc) from exc
            else:
                try:  # ViTs take the image size; Swin and CNNs adapt to any size
                    net = models.get_model(config.name, weights=None, image_size=config.image_size, **extra)
                except TypeError:
                    net = models.get_model(config.name, weights=None, **extra)
            path, head = last_linear(net)
            if head.out_features != config.num_classes:
                replace_module(net, path, nn.Linear(head.in_features, config.num_classes))
        return net, 3, last_linear(net)[1].in_features  # torchvision's models take RGB

    head_path: str | None = None  # where the classifier sits, found once (after drop_head an Identity sits there)

    def head(self, net: nn.Module) -> nn.Module:
        if self.head_path is None:
            self.head_path = last_linear(net)[0]
        return net.get_submodule(self.head_path)

    def drop_head(self, net: nn.Module) -> None:
        from torch import nn

        self.head(net)
        replace_module(net, self.head_path, nn.Identity())  # the embedding still passes there, for embed()

    def preprocessing(self, net: nn.Module, config: ModelConfig) -> dict[str, Any]:
        from torchvision import models

        if config.name is None:
            return {}
        try:  # the preprocessing the model's published weights were trained with (ImageNet for all of them)
            transforms = models.get_model_weights(config.name).DEFAULT.transforms()
        except (ValueError, AttributeError, KeyError):
            return {}
        out = {"mean": [float(v) for v in transforms.mean], "std": [float(v) for v in transforms.std]}
        mode = getattr(getattr(transforms, "interpolation", None), "value", None)
        return out | ({"interpolation": mode} if mode in INTERPOLATIONS else {})

    def embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return embed_through_head(net, self.head(net), lambda: net(x))
