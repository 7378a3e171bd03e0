"""The detector: Hugging Face ``DeformableDetrForObjectDetection`` behind a small wrapper.

Deformable DETR is the reference's detector (so its numbers are comparable), it converges in tens of
epochs rather than DETR's hundreds, and transformers runs its deformable attention in pure PyTorch
(``grid_sample``) on a CPU. It is built from a config with a randomly initialised ResNet backbone and
no network access (``use_pretrained_backbone`` off); ``name`` + ``pretrained`` load a hub checkpoint
with ``from_pretrained`` for users with network (for example ``SenseTime/deformable-detr``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from gslora.config import from_dict, require, to_dict
from gslora.errors import GSLoRAError
from gslora.io import atomic_directory, atomic_write_json, sha256_file
from gslora.models.checkpoint import read_meta_file
from gslora.models.weights import check_finite_weights
from gslora.version import __version__

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class DetectorConfig:
    """A Deformable DETR's shape (defaults: a small one that trains on a CPU).

    Args:
        name: hub id for ``from_pretrained`` when ``pretrained`` (network); otherwise unused.
        num_classes: object classes (no background class: Deformable DETR uses sigmoid focal loss).
        image_size: square input size.
        d_model, encoder_layers, decoder_layers, ffn_dim, heads, num_queries, feature_levels: the
            transformer's shape.
        backbone_hidden, backbone_depths: the ResNet backbone's stage widths and depths.
        aux_loss: decoder-layer auxiliary losses.
        mean, std: input normalisation.
        hf_config: a full transformers config (as saved in checkpoints); overrides the shape fields.
    """

    name: str = ""
    pretrained: bool = False
    num_classes: int = 10
    image_size: int = 64
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_dim: int = 256
    heads: int = 4
    num_queries: int = 16
    feature_levels: int = 3
    backbone_hidden: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    backbone_depths: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    aux_loss: bool = True
    mean: float = 0.2
    std: float = 0.3
    hf_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        require(self.num_classes >= 1, "model.num_classes", self.num_classes, "must be >= 1")
        require(self.d_model % self.heads == 0, "model.d_model", self.d_model, "must be a multiple of model.heads")
        require(1 <= self.feature_levels <= 3, "model.feature_levels", self.feature_levels, "must be 1, 2 or 3")
        require(len(self.backbone_hidden) == 4 and len(self.backbone_depths) == 4, "model.backbone_hidden",
                self.backbone_hidden, "backbone_hidden and backbone_depths need 4 stages each")


class Detector(nn.Module):
    """uint8 images in, Deformable DETR outputs (and losses, with targets) out."""

    def __init__(self, net: nn.Module, config: DetectorConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - self.config.mean) / self.config.std

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        """``targets``: per image ``{"labels": (n,), "boxes": (n, 4) x0 y0 x1 y1 pixels}``."""
        labels = None if targets is None else [hf_target(t, images.shape[-1]) for t in targets]
        return self.net(pixel_values=self.prepare(images), labels=labels)

    def class_embeddings(self) -> torch.Tensor:
        """The (C, D) rows of the last decoder layer's classifier (GS-LoRA++'s detection prototypes)."""
        return self.net.class_embed[-1].weight


def hf_target(target: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Pixel (x0, y0, x1, y1) -> transformers' normalised (cx, cy, w, h)."""
    b = target["boxes"] / size
    boxes = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    return {"class_labels": target["labels"], "boxes": boxes}


def match_queries(detector: Detector, out: Any, targets: list[dict[str, torch.Tensor]], size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of the final layer's queries to the targets, with the detector's own costs (as its set loss
    matches them).

    Args:
        detector: whose config gives the costs.
        out: its output (``logits`` (B, Q, C), ``pred_boxes``).
        targets: per image ``{"labels": (n,), "boxes": (n, 4) x0 y0 x1 y1 pixels}``.
        size: the images' side in pixels.

    Returns ((K, 2) image and query indices, (K,) the matched objects' classes)."""
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

    hf = detector.net.config
    matcher = DeformableDetrHungarianMatcher(class_cost=hf.class_cost, bbox_cost=hf.bbox_cost, giou_cost=hf.giou_cost)
    hf_targets = [hf_target(t, size) for t in targets]
    with torch.no_grad():
        indices = matcher({"logits": out.logits.detach(), "pred_boxes": out.pred_boxes.detach()}, hf_targets)
    pairs, classes = [], []
    for i, (q, t) in enumerate(indices):
        pairs.append(torch.stack([torch.full_like(q, i), q], 1))
        classes.append(hf_targets[i]["class_labels"][t.to(hf_targets[i]["class_labels"].device)])
    device = out.logits.device
    return torch.cat(pairs).to(device).long(), torch.cat(classes).to(device).long()


def hf_detector_config(config: DetectorConfig):
    from transformers import DeformableDetrConfig, ResNetConfig

    if config.hf_config:
        return DeformableDetrConfig.from_dict(config.hf_config)
    stages = ["stage2", "stage3", "stage4"][3 - config.feature_levels:]
    backbone = ResNetConfig(embedding_size=config.backbone_hidden[0], hidden_sizes=config.backbone_hidden,
                            depths=config.backbone_depths, layer_type="basic", out_features=stages)
    return DeformableDetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, num_labels=config.num_classes,
        d_model=config.d_model, encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers,
        encoder_ffn_dim=config.ffn_dim, decoder_ffn_dim=config.ffn_dim, encoder_attention_heads=config.heads,
        decoder_attention_heads=config.heads, num_queries=config.num_queries,
        num_feature_levels=config.feature_levels, auxiliary_loss=config.aux_loss, dropout=0.0)


def build_detector(config: DetectorConfig) -> Detector:
    """Build a detector from its config, or from the hub (``pretrained``, network) with a new class head."""
    from transformers import DeformableDetrForObjectDetection

    if config.pretrained:
        if not config.name:
            raise GSLoRAError("model.pretrained needs model.name, a hub id such as SenseTime/deformable-detr")
        try:
            net = DeformableDetrForObjectDetection.from_pretrained(config.name, num_labels=config.num_classes,
                                                                   ignore_mismatched_sizes=True)
        except OSError as exc:
            raise GSLoRAError(f"cannot load {config.name!r} from the hub ({exc}); without network, train a detector "
                              "with `gslora pretrain --task detection`") from exc
    else:
        net = DeformableDetrForObjectDetection(hf_detector_config(config))
    return Detector(net, config)


def save_detector(model: Detector, directory: str | Path, *, classes: list[str], extra: dict[str, Any] | None = None,
                  replace: bool = False) -> str:
    """Write a detector checkpoint (``model.safetensors`` + ``config.json`` with ``task: detection``).

    The class and box heads of the decoder layers share tensors; ``save_model`` stores each once."""
    with atomic_directory(directory, replace=replace) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "gslora_version": __version__})
        digest = sha256_file(tmp / WEIGHTS_FILE)
        config = to_dict(model.config) | {"pretrained": False, "hf_config": model.net.config.to_dict()}
        atomic_write_json(tmp / CONFIG_FILE, {"gslora_version": __version__, "task": "detection",
                                              "model": config, "classes": list(classes), "sha256": digest,
                                              **(extra or {})})
    return digest


def read_detector_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(weights file, config.json) of a detector checkpoint directory."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise GSLoRAError(f"{str(path)!r} is not a gslora detector checkpoint (it needs {WEIGHTS_FILE} and "
                          f"{CONFIG_FILE}); train one with `gslora pretrain --task detection`")
    meta = read_meta_file(path / CONFIG_FILE)
    if meta.get("task") != "detection":
        raise GSLoRAError(f"{str(path)!r} is a classification checkpoint; pass a detector checkpoint")
    return path / WEIGHTS_FILE, meta


def load_detector(path: str | Path) -> tuple[Detector, dict[str, Any]]:
    """Build and load a detector checkpoint; returns (model, config.json)."""
    path = Path(path)
    _, meta = read_detector_meta(path)
    model = build_detector(from_dict(DetectorConfig, meta["model"], "model"))
    try:
        load_model(model, str(path / WEIGHTS_FILE), strict=True)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise GSLoRAError(f"checkpoint {str(path)!r} does not fit its config ({str(exc)[:300]})") from exc
    check_finite_weights(model.state_dict(), path)
    return model, meta
