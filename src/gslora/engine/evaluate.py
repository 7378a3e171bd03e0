"""Batched inference and accuracy per class set."""

from __future__ import annotations

import torch
from torch import nn

from gslora.data import ImageSet


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, *, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Top-1 predicted class of every image, in eval mode (the model's mode is restored after)."""
    was_training = model.training
    model.eval()
    preds = [model(data.images[i:i + batch_size].to(device)).argmax(dim=1).cpu()
             for i in range(0, len(data), batch_size)]
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy in percent of each class (``None`` for a class without test images)."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append(100.0 * (predictions[mask] == c).float().mean().item() if mask.any() else None)
    return out
