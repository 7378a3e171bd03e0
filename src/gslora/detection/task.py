"""Object detection: a Deformable DETR's per-class AP, mAP and mAP@0.5 by class group, H over mAP@0.5."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from gslora.config import SequenceConfig, TrainConfig
from gslora.data import Request
from gslora.detection.data import DetectionDataset, load_detection_dataset
from gslora.detection.engine import (
    DetectionForgetConfig,
    evaluate_detector,
    request_subsets,
    train_detection_request,
)
from gslora.detection.metrics import detection_metrics, group_map
from gslora.detection.model import Detector, load_detector, read_detector_meta, save_detector
from gslora.engine.loop import Profile, ProgressFactory
from gslora.errors import GSLoRAError
from gslora.methods import Method, TaskContext
from gslora.tasks.base import Subsets, Task, register_task


def ap_tensors(ap: dict[str, list[float | None]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([math.nan if v is None else v for v in values]) for k, values in ap.items()}


def ap_lists(tensors: dict[str, torch.Tensor]) -> dict[str, list[float | None]]:
    return {k: [None if math.isnan(v) else v for v in t.tolist()] for k, t in tensors.items()}


class Detection(Task):
    name = "detection"
    config_class = DetectionForgetConfig
    base_key = "ap50"

    def load_data(self, config: DetectionForgetConfig) -> DetectionDataset:
        return load_detection_dataset(config.data)

    def data_record(self, dataset: DetectionDataset) -> dict[str, Any]:
        return {"name": dataset.name, "classes": dataset.classes, "train_images": len(dataset.train),
                "test_images": len(dataset.test)}

    def read_meta(self, checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
        return read_detector_meta(checkpoint)

    def load_model(self, checkpoint: str | Path) -> tuple[Detector, dict[str, Any]]:
        return load_detector(checkpoint)

    def save_model(self, model: Detector, directory: Path, *, classes: list[str], extra: dict[str, Any]) -> str:
        return save_detector(model, directory, classes=classes, extra=extra)

    def check_model(self, dataset: DetectionDataset, meta: dict[str, Any], checkpoint: str | Path) -> None:
        if meta.get("classes") != dataset.classes:
            trained = list(meta.get("classes") or [])[:5]
            raise GSLoRAError(f"detector {str(checkpoint)!r} was trained on classes {trained} "
                              f"but the data set has {dataset.classes[:5]}; use the data set it was trained on")

    def subsets(self, dataset: DetectionDataset, request: Request, sequence: SequenceConfig) -> Subsets:
        return Subsets(*request_subsets(dataset, request, sequence))

    def train(self, method: Method, context: TaskContext, subsets: Subsets, config: TrainConfig, *,
              device: torch.device, progress: ProgressFactory, profile: Profile | None = None
              ) -> list[dict[str, float]]:
        return train_detection_request(method, subsets.forget, subsets.retain, config,
                                       request_index=context.request.index, device=device, progress=progress,
                                       profile=profile, done=self.stop_check(method, context, subsets, config,
                                                                             device=device))

    def evaluate(self, model: Detector, dataset: DetectionDataset, config: DetectionForgetConfig, *,
                 device: torch.device) -> dict[str, list[float | None]]:
        return evaluate_detector(model, dataset.test, dataset.num_classes, device=device,
                                 batch_size=config.eval_batch_size)

    def overall(self, evaluation: dict[str, list[float | None]], dataset: DetectionDataset) -> dict[str, Any]:
        return {"metric": "mAP@0.5", "score": group_map(evaluation["ap50"], range(dataset.num_classes)),
                "per_class": evaluation["ap50"], "map": group_map(evaluation["ap"], range(dataset.num_classes))}

    def base_tensors(self, evaluation: dict[str, list[float | None]]) -> dict[str, torch.Tensor]:
        return ap_tensors(evaluation)

    def measure(self, dataset: DetectionDataset, request: Request, before: dict[str, list], after: dict[str, list],
                base: dict[str, torch.Tensor], config: DetectionForgetConfig) -> dict[str, Any]:
        sets = {"forget": request.forget, "retain": request.retain, "old": request.old}
        metrics: dict[str, Any] = detection_metrics(after, before, **sets)
        metrics["map50_f_original"] = detection_metrics(after, ap_lists(base), **sets)["map50_f_before"]
        metrics["ap50_per_class"] = after["ap50"]
        metrics["per_class"] = {"before": before["ap50"], "after": after["ap50"]}
        return metrics

    def training_forget_score(self, model: Detector, subsets: Subsets, request: Request, *,
                              device: torch.device) -> float | None:
        ap = evaluate_detector(model, subsets.forget, model.config.num_classes, device=device)
        return group_map(ap["ap50"], request.forget)

    def scores(self, metrics: dict[str, Any]) -> dict[str, float | None]:
        return {"forget": metrics["map50_f"], "forget_before": metrics["map50_f_before"],
                "retain": metrics["map50_r"], "retain_before": metrics["map50_r_before"], "h_mean": metrics["h_mean"]}


register_task(Detection())
