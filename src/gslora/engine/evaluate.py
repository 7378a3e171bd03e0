"""Batched inference: predictions (plain and margin-penalised) and embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gslora.data import ImageSet, load_batches, spans
from gslora.data.datasets import Images
from gslora.models import VisionClassifier, evaluating


@dataclass(frozen=True)
class Predictions:
    """What a model says about a test split.

    Attributes:
        top1: argmax of the logits, (N,).
        margin_top1: for margin heads (CosFace), argmax with the margin applied to the true class:
            correct only if cos(theta_y) - m beats every other cosine (the reference's accuracy).
        embeddings: (N, D) embeddings, when asked for (face verification).
    """

    top1: torch.Tensor
    margin_top1: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


@torch.no_grad()
def predict(model: VisionClassifier, data: ImageSet, *, device: torch.device, batch_size: int = 512,
            embeddings: bool = False) -> Predictions:
    """Run ``model`` over ``data`` in eval mode (the model's mode is restored after)."""
    top1, margin, feats = [], [], []
    order = spans(len(data), batch_size)
    with evaluating(model):
        for span, images in zip(order, load_batches(data.images, order), strict=True):
            logits, embedding = model.forward_features(images.to(device))
            top1.append(logits.argmax(dim=1).cpu())
            if model.has_margin:
                labels = data.labels[span].to(device)
                margin.append(model.classify(embedding, labels).argmax(dim=1).cpu())
            if embeddings:
                feats.append(embedding.float().cpu())
    empty = torch.empty(0, dtype=torch.long)
    return Predictions(torch.cat(top1) if top1 else empty, torch.cat(margin) if margin else None,
                       torch.cat(feats) if feats else None)



@torch.no_grad()
def logits_and_embeddings(model: VisionClassifier, images: Images, *, device: torch.device,
                          batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain logits (no margin applied) and embeddings of ``images`` in eval mode, on the CPU."""
    logits, feats = [], []
    with evaluating(model):
        for batch in load_batches(images, spans(len(images), batch_size)):
            embedding = model.embed(batch.to(device))
            logits.append(model.classify(embedding).float().cpu())
            feats.append(embedding.float().cpu())
    if not logits:
        return torch.empty(0), torch.empty(0)
    return torch.cat(logits), torch.cat(feats)
