"""timm ViTs: by name (``vit_tiny_patch16_224``, ``deit_small_patch16_224``, ...) or by shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gslora.config import INTERPOLATIONS
from gslora.errors import GSLoRAError
from gslora.models.families.base import FAMILIES, Family, first_line, require_hub, unreachable_weights

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gslora.config import ModelConfig


@FAMILIES.register("timm")
class Timm(Family):
    def build(self, config: ModelConfig) -> tuple[nn.Module, int, int]:
        import timm

        from gslora.models.stems import ConvStem

        shape = {"img_size": config.image_size, "in_chans": config.in_chans, "num_classes": config.num_classes,
                 "drop_path_rate": config.drop_path, **(config.kwargs or {})}
        if config.stem == "conv" and config.name is not None:
            raise GSLoRAError(f"model.stem=conv replaces the patch embedding of a ViT built by shape; drop "
                              f"model.name={config.name!r} or use model.stem=patch")
        if config.name is None:
            if config.stem == "conv":
                shape["embed_layer"] = ConvStem
            net = timm.create_model("vit_base_patch16_224", pretrained=False, patch_size=config.patch_size,
                                    embed_dim=config.width, depth=config.depth, num_heads=config.heads,
                                    mlp_ratio=config.mlp_ratio, **shape)
        else:
            if config.pretrained:
                require_hub(config.name, "huggingface.co")
            try:
                try:
                    net = timm.create_model(config.name, pretrained=config.pretrained, **shape)
                except TypeError:  # a model without an image size (a CNN): it takes any
                    shape.pop("img_size")
                    net = timm.create_model(config.name, pretrained=config.pretrained, **shape)
            except RuntimeError as exc:
                if config.pretrained and "Unknown model" not in str(exc):
                    raise unreachable_weights(config.name, exc) from exc
                raise GSLoRAError(f"timm cannot build model.name={config.name!r}: {first_line(exc)}") from exc
            except Exception as exc:  # network and hub errors: requests, httpx and huggingface_hub have their own
                if config.pretrained:
                    raise unreachable_weights(config.name, exc) from exc
                raise
        return net, config.in_chans, net.num_features

    def head(self, net: nn.Module) -> nn.Module:
        return net.get_classifier()  # the final layer: a ViT's head, Swin's and ConvNeXt's head.fc

    def drop_head(self, net: nn.Module) -> None:
        net.reset_classifier(0)

    def preprocessing(self, net: nn.Module, config: ModelConfig) -> dict[str, Any]:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        if config.name is None:  # built by shape: gslora's 0.5 and bilinear
            return {}
        out: dict[str, Any] = {}
        if "mean" in cfg and "std" in cfg:
            out.update(mean=[float(v) for v in cfg["mean"]], std=[float(v) for v in cfg["std"]])
        if cfg.get("interpolation") in INTERPOLATIONS:
            out["interpolation"] = cfg["interpolation"]
        return out

    def embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net.forward_head(net.forward_features(x), pre_logits=True)
