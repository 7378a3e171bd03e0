"""Detection predictions and per-class-group mAP (torchmetrics' MeanAveragePrecision, pycocotools backend)."""

from __future__ import annotations

import torch

from gslora.detection.data import DetectionSet
from gslora.detection.model import Detector
from gslora.metrics import h_mean
from gslora.models import evaluating


@torch.no_grad()
def detect(model: Detector, split: DetectionSet, *, device: torch.device, batch_size: int = 64,
           top_k: int = 100) -> list[dict[str, torch.Tensor]]:
    """Per image: the ``top_k`` (query, class) pairs by sigmoid score, as Deformable DETR's post-processing,
    with boxes (x0, y0, x1, y1) in pixels."""
    size = model.config.image_size
    out = []
    with evaluating(model):
        for start in range(0, len(split), batch_size):
            result = model(split.images[start:start + batch_size].to(device))
            prob = result.logits.sigmoid()  # (B, Q, C)
            b, q, c = prob.shape
            scores, flat = prob.view(b, -1).topk(min(top_k, q * c), dim=1)
            query, label = flat // c, flat % c
            boxes = result.pred_boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4) cx cy w h
            xyxy = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1) * size
            for i in range(b):
                out.append({"boxes": xyxy[i].cpu(), "scores": scores[i].cpu(), "labels": label[i].cpu()})
    return out


def per_class_ap(predictions: list[dict[str, torch.Tensor]], split: DetectionSet, num_classes: int
                 ) -> dict[str, list[float | None]]:
    """COCO AP (IoU 0.50:0.95) and AP@0.5 per class in percent; None for classes without test objects."""
    from torchmetrics.detection import MeanAveragePrecision

    targets = [{"boxes": b, "labels": lab} for b, lab in zip(split.boxes, split.labels)]
    out: dict[str, list[float | None]] = {}
    for key, thresholds in (("ap", None), ("ap50", [0.5])):
        metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, iou_thresholds=thresholds,
                                      backend="pycocotools")
        metric.update(predictions, targets)
        result = metric.compute()
        values: list[float | None] = [None] * num_classes
        for cls, ap in zip(result["classes"].tolist(), result["map_per_class"].tolist()):
            values[int(cls)] = None if ap < 0 else 100.0 * ap
        out[key] = values
    return out


def group_map(per_class: list[float | None], classes) -> float | None:
    """Mean AP over ``classes`` that have test objects."""
    values = [per_class[c] for c in classes if per_class[c] is not None]
    return sum(values) / len(values) if values else None


def detection_metrics(now: dict[str, list], before: dict[str, list], *, forget, retain, old) -> dict[str, float | None]:
    """mAP and mAP@0.5 on the forget, retained and earlier-forgotten classes, before and after, and H-Mean
    over mAP@0.5 (the drop on forget classes against retained mAP@0.5), as for accuracy."""
    m = {
        "map50_f": group_map(now["ap50"], forget), "map50_r": group_map(now["ap50"], retain),
        "map50_o": group_map(now["ap50"], old) if old else None,
        "map50_f_before": group_map(before["ap50"], forget), "map50_r_before": group_map(before["ap50"], retain),
        "map_f": group_map(now["ap"], forget), "map_r": group_map(now["ap"], retain),
        "map_o": group_map(now["ap"], old) if old else None,
        "map_f_before": group_map(before["ap"], forget), "map_r_before": group_map(before["ap"], retain),
    }
    m["h_mean"] = h_mean(m["map50_f_before"] - m["map50_f"], m["map50_r"])
    m["h_exact"] = h_mean(m["map50_f_before"], m["map50_r_before"])
    return m
