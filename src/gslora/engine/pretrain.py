"""Pre-training a base classifier on all classes of a data set."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F

from gslora.config import ModelConfig, TrainConfig
from gslora.data import Dataset
from gslora.engine.evaluate import predict
from gslora.engine.loop import (
    ProgressFactory,
    augment,
    no_progress,
    resolve_device,
    train_epochs,
)
from gslora.errors import GSLoRAError
from gslora.metrics import accuracy
from gslora.models import VisionClassifier, build_model

log = logging.getLogger(__name__)


def pretrain(model_config: ModelConfig, dataset: Dataset, config: TrainConfig, *,
             teacher: torch.Tensor | None = None, distill_weight: float = 0.0,
             progress: ProgressFactory = no_progress) -> tuple[VisionClassifier, dict[str, Any]]:
    """Train a model on every class of ``dataset``; returns the model and {seconds, test_acc, history}.

    Args:
        teacher: optional (N_train, T) target embeddings, one per training image (for example a face
            descriptor). A linear map of the model's embedding is then pulled toward them with
            ``distill_weight * (1 - cos)``; the map is dropped after training.
    """
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
