"""Pre-training a base classifier on all classes of a data set."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gslora.config import ModelConfig, PretrainConfig, TrainConfig, to_dict
from gslora.data import Dataset, for_model, load_dataset, load_embeddings, resolve_classes
from gslora.engine import distributed
from gslora.engine.evaluate import predict
from gslora.engine.loop import (
    ProgressFactory,
    augment,
    no_progress,
    resolve_device,
    train_epochs,
)
from gslora.engine.provenance import stamp
from gslora.errors import GSLoRAError
from gslora.metrics import accuracy
from gslora.models import VisionClassifier, build_model, save_checkpoint

log = logging.getLogger(__name__)


def pretrain(model_config: ModelConfig, dataset: Dataset, config: TrainConfig | None = None, *,
             teacher: torch.Tensor | None = None, distill_weight: float = 0.0,
             progress: ProgressFactory = no_progress) -> tuple[VisionClassifier, dict[str, Any]]:
    """Train a model on every class of ``dataset``; returns the model and {seconds, test_acc, history}.

    Args:
        config: optimisation settings; ``None`` takes pre-training's defaults (``PretrainConfig().train``).
        teacher: optional (N_train, T) target embeddings, one per training image (for example a face
            descriptor). A linear map of the model's embedding is then pulled toward them with
            ``distill_weight * (1 - cos)``; the map is dropped after training.
    """
    config = config or PretrainConfig().train
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(model_config).to(device)
    projection = None
    if teacher is not None:
        if len(teacher) != len(dataset.train):
            raise GSLoRAError(f"teacher embeddings have {len(teacher)} rows but the training split has "
                              f"{len(dataset.train)} images; they must be aligned one to one")
        projection = torch.nn.Linear(model.embed_dim, teacher.shape[1]).to(device)
        teacher = F.normalize(teacher.float(), dim=1)
    params = [p for p in model.parameters() if p.requires_grad] + list(projection.parameters() if projection else [])

    def batch_loss(idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x, y = dataset.train.images[idx], dataset.train.labels[idx].to(device)
        if config.augment:
            x = augment(x, generator, jitter=config.jitter)
        x, y, idx = distributed.shard((x, y, idx))  # after the augmentation: the generator advances on every rank
        logits, embedding = model.forward_features(x.to(device), y)  # a margin head needs the labels
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        if projection is not None:
            target = teacher[idx].to(device)
            loss = loss + distill_weight * (1 - F.cosine_similarity(projection(embedding), target)).mean()
        return loss

    start = time.perf_counter()
    history = train_epochs(model, params, len(dataset.train), config, batch_loss, desc="pretrain", progress=progress)
    seconds = time.perf_counter() - start
    predictions = predict(model, dataset.test, device=device)
    classes = range(dataset.num_classes)
    info = {"seconds": seconds, "test_acc": accuracy(predictions.top1, dataset.test.labels, classes),
            "history": history}
    if predictions.margin_top1 is not None:
        info["test_acc_margin"] = accuracy(predictions.margin_top1, dataset.test.labels, classes)
    return model.cpu(), info


def run_pretraining(config: PretrainConfig, out: str | Path, *, overwrite: bool = False, dataset: Dataset | None = None,
                    progress: ProgressFactory = no_progress) -> tuple[str, dict[str, Any]]:
    """Pre-train the model of ``config`` on its data set and write a checkpoint to ``out``.

    Returns the weights' SHA-256 and {seconds, test_acc[, test_acc_margin]}. ``dataset``: the data set of
    ``config.data`` when the caller has loaded it already.

    Raises:
        GSLoRAError: ``out`` exists (without ``overwrite``), or the model does not fit the data.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise GSLoRAError(f"{str(out)!r} already exists; pass --overwrite to replace it or choose another --out")
    dataset = dataset or load_dataset(for_model(config.data, to_dict(config.model)))
    if config.model.num_classes != dataset.num_classes:
        raise GSLoRAError(f"model.num_classes={config.model.num_classes} but {dataset.name} has {dataset.num_classes} "
                          "classes; drop model.num_classes to take it from the data")
    teacher = load_embeddings(config.distill.teacher, config.distill.key) if config.distill.teacher else None
    if teacher is not None and dataset.train_index is not None:  # a validation split holds some images out
        if len(teacher) != len(dataset.train) + len(dataset.test):
            raise GSLoRAError(f"teacher embeddings have {len(teacher)} rows but the training split has "
                              f"{len(dataset.train) + len(dataset.test)} images; they must be aligned one to one")
        teacher = teacher[dataset.train_index]
    excluded = resolve_classes(config.exclude_classes, dataset.classes) if config.exclude_classes else []
    if excluded:
        keep = torch.nonzero(~torch.isin(dataset.train.labels, torch.tensor(excluded))).flatten()
        if teacher is not None:
            teacher = teacher[keep]
        dataset = dataclasses.replace(dataset, train=dataset.train.subset(keep))
        log.info("training without %s (%d training images left)", [dataset.classes[c] for c in excluded], len(keep))
    model, info = pretrain(config.model, dataset, config.train, teacher=teacher, distill_weight=config.distill.weight,
                           progress=progress)
    info.pop("history")
    digest = save_checkpoint(model, out, classes=dataset.classes, replace=out.exists(),
                             extra={"pretrain": {**info, "dataset": dataset.name, "config": to_dict(config),
                                                 "excluded_classes": excluded, **stamp()}})
    return digest, info
