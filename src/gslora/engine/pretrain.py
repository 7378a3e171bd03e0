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
    batches,
    check_finite,
    cosine_lr,
    make_optimizer,
    no_progress,
    resolve_device,
)
from gslora.metrics import accuracy
from gslora.models import VisionClassifier, build_model

log = logging.getLogger(__name__)


def pretrain(model_config: ModelConfig, dataset: Dataset, config: TrainConfig, *, label_smoothing: float = 0.1,
             progress: ProgressFactory = no_progress) -> tuple[VisionClassifier, dict[str, Any]]:
    """Train a model on every class of ``dataset``; returns the model and {seconds, test_acc, history}."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(model_config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    generator = torch.Generator().manual_seed(config.seed)
    steps = -(-len(dataset.train) // config.batch_size)
    history = []
    start = time.perf_counter()
    with progress(config.epochs * steps, "pretrain") as bar:
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(epoch, config)
            model.train()
            total = 0.0
            for step, (x, y) in enumerate(batches(dataset.train, config.batch_size, generator)):
                if config.augment:
                    x = augment(x, generator)
                loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=label_smoothing)
                check_finite({"loss": loss}, epoch=epoch, step=step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                total += loss.item()
                bar.update(1)
            history.append({"epoch": epoch, "loss": total / steps})
            bar.set_postfix({"loss": f"{total / steps:.3f}"})
            log.info("pretrain epoch %d: loss %.4f", epoch, total / steps)
    seconds = time.perf_counter() - start
    predictions = predict(model, dataset.test, device=device)
    test_acc = accuracy(predictions, dataset.test.labels, range(dataset.num_classes))
    return model.cpu(), {"seconds": seconds, "test_acc": test_acc, "history": history}
