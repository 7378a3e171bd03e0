"""Image classification (and face recognition with a margin head): top-1 accuracy by class set, H-Mean,
margin-penalised accuracy and face verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gslora.config import SequenceConfig, TrainConfig
from gslora.data import Dataset, Request, for_model, load_dataset, old_indices, request_data, sample_per_class
from gslora.engine.evaluate import Predictions, predict
from gslora.engine.loop import Profile, ProgressFactory, train_request
from gslora.errors import GSLoRAError
from gslora.methods import Method, TaskContext
from gslora.metrics import accuracy, request_metrics, verification
from gslora.metrics.paired import hits_record, labels_digest
from gslora.models import VisionClassifier, load_checkpoint, read_checkpoint_meta, save_checkpoint
from gslora.tasks.base import Subsets, Task, register_task


class Classification(Task):
    name = "classification"
    base_key = "top1"

    @property
    def config_class(self) -> type:  # type: ignore[override]
        from gslora.engine.continual import ForgetConfig

        return ForgetConfig

    def load_data(self, config: Any) -> Dataset:
        """The data set, decoded for the checkpoint's model (its size and resize filter) unless ``data`` says."""
        try:
            model = read_checkpoint_meta(config.checkpoint)[1].get("model") if config.checkpoint else None
        except GSLoRAError:  # reported where the checkpoint is loaded
            model = None
        return load_dataset(for_model(config.data, model))

    def data_record(self, dataset: Dataset) -> dict[str, Any]:
        return {"name": dataset.name, "classes": dataset.classes, "train_images": len(dataset.train),
                "test_images": len(dataset.test), "test_labels_sha256": labels_digest(dataset.test.labels)}

    def read_meta(self, checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
        return read_checkpoint_meta(checkpoint)

    def load_model(self, checkpoint: str | Path) -> tuple[VisionClassifier, dict[str, Any]]:
        return load_checkpoint(checkpoint)

    def save_model(self, model: VisionClassifier, directory: Path, *, classes: list[str],
                   extra: dict[str, Any]) -> str:
        return save_checkpoint(model, directory, classes=classes, extra=extra)

    def subsets(self, dataset: Dataset, request: Request, sequence: SequenceConfig) -> Subsets:
        indices = request_data(dataset, request, sequence)
        forget, retain = dataset.train.subset(indices.forget_indices), dataset.train.subset(indices.retain_indices)
        counts = torch.bincount(torch.cat([forget.labels, retain.labels]), minlength=dataset.num_classes).tolist()
        with_data = [c for c in (*request.forget, *request.retain) if c not in request.missing]
        short = {dataset.classes[c]: counts[c] for c in with_data
                 if sequence.shots is not None and counts[c] < sequence.shots}
        return Subsets(forget, retain, short=short,
                       forget_per_class={dataset.classes[c]: counts[c] for c in request.forget})

    def old_subset(self, dataset: Dataset, request: Request, sequence: SequenceConfig) -> Any:
        return dataset.train.subset(old_indices(dataset, request, sequence))

    def train(self, method: Method, context: TaskContext, subsets: Subsets, config: TrainConfig, *,
              device: torch.device, progress: ProgressFactory, profile: Profile | None = None
              ) -> list[dict[str, float]]:
        return train_request(method, context, subsets.forget, subsets.retain, config, device=device,
                             progress=progress, profile=profile,
                             done=self.stop_check(method, context, subsets, config, device=device))

    def evaluate(self, model: VisionClassifier, dataset: Dataset, config: Any, *, device: torch.device) -> Predictions:
        wants = model.has_margin if config.verification is None else config.verification
        return predict(model, dataset.test, device=device, batch_size=config.eval_batch_size, embeddings=wants)

    def overall(self, evaluation: Predictions, dataset: Dataset) -> dict[str, Any]:
        labels, every = dataset.test.labels, range(dataset.num_classes)
        out = {"metric": "top-1 accuracy", "score": accuracy(evaluation.top1, labels, every),
               "per_class": [accuracy(evaluation.top1, labels, [c]) for c in every]}
        if evaluation.margin_top1 is not None:
            out["margin_score"] = accuracy(evaluation.margin_top1, labels, every)
        return out

    def base_tensors(self, evaluation: Predictions) -> dict[str, torch.Tensor]:
        base = {"top1": evaluation.top1}
        if evaluation.margin_top1 is not None:
            base["margin_top1"] = evaluation.margin_top1
        return base

    def measure(self, dataset: Dataset, request: Request, before: Predictions, after: Predictions,
                base: dict[str, torch.Tensor], config: Any) -> dict[str, Any]:
        """Accuracies and H (plain, and margin-penalised for margin heads), per-class accuracy, each evaluation
        image's top-1 hit before and after (``hits``: what a paired comparison of two methods needs), verification."""
        labels = dataset.test.labels

        def readings(key: str) -> dict[str, float | None]:
            now, then, original = getattr(after, key), getattr(before, key), base[key]
            missing = request.missing or None
            return request_metrics(
                acc_f=accuracy(now, labels, request.forget), acc_r=accuracy(now, labels, request.retain),
                acc_o=accuracy(now, labels, request.old) if request.old else None,
                acc_f_before=accuracy(then, labels, request.forget),
                acc_r_before=accuracy(then, labels, request.retain),
                acc_f_original=accuracy(original, labels, request.forget),
                acc_m=accuracy(now, labels, missing) if missing else None,
                acc_m_before=accuracy(then, labels, missing) if missing else None)

        metrics: dict[str, Any] = readings("top1")
        metrics["per_class"] = {"before": [accuracy(before.top1, labels, [c]) for c in range(dataset.num_classes)],
                                "after": [accuracy(after.top1, labels, [c]) for c in range(dataset.num_classes)]}
        if after.margin_top1 is not None and "margin_top1" in base:
            metrics["margin"] = readings("margin_top1")
        metrics["hits"] = hits_record(before.top1, after.top1, labels=labels, num_classes=dataset.num_classes,
                                      forget=request.forget, retain=request.retain)
        if after.embeddings is not None and before.embeddings is not None:
            keep = torch.arange(len(labels))
            if len(labels) > config.verification_images:
                per_class = max(2, config.verification_images // dataset.num_classes)
                keep = sample_per_class(labels, range(dataset.num_classes), shots=per_class, seed=0)
            sets = {"forget": request.forget, "retain": request.retain}
            for suffix, preds in (("", after), ("_before", before)):
                tars = verification(preds.embeddings[keep], labels[keep], sets, fars=config.fars)
                metrics[f"tar_f{suffix}"], metrics[f"tar_r{suffix}"] = tars["forget"], tars["retain"]
        return metrics

    def training_forget_score(self, model: VisionClassifier, subsets: Subsets, request: Request, *,
                              device: torch.device) -> float | None:
        predictions = predict(model, subsets.forget, device=device)
        return accuracy(predictions.top1, subsets.forget.labels, request.forget)

    def verify(self, model: VisionClassifier, dataset: Dataset, groups: dict[str, list[int]], retained: list[int],
               config: Any, *, device: torch.device, acc_before: dict[str, float],
               original: VisionClassifier | None) -> dict[str, Any] | None:
        from gslora.verification import verify

        return verify(model, dataset, groups, retained, config=config, device=device, acc_before=acc_before,
                      original=original)

    def scores(self, metrics: dict[str, Any]) -> dict[str, float | None]:
        return {"forget": metrics["acc_f"], "forget_before": metrics["acc_f_before"], "retain": metrics["acc_r"],
                "retain_before": metrics["acc_r_before"], "h_mean": metrics["h_mean"]}


register_task(Classification())
