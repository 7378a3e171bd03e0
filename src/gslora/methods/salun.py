"""SalUn, saliency-based unlearning (Fan et al. 2024), random-label variant.

At the request's start, the saliency of each weight is |d CE(forget, true labels) / d theta| over the
forget subset; the ``sparsity`` share of the backbone's weights with the highest saliency forms the
mask. Training is random-label fine-tuning (forget relabelled to random retained classes + rehearsal *
CE(retain)) in which only masked weights change: gradients are masked, and weights outside the mask
are restored after every step (so weight decay cannot move them either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gslora.config import require
from gslora.methods.base import METHODS, TaskContext
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod
from gslora.models import VisionClassifier, evaluating


@dataclass
class SalUnConfig(FineTuneConfig):
    """Args:
        sparsity: share of the trainable weights that may change [0.5, the paper's default].
        saliency_batch: batch size of the saliency pass.
    """

    sparsity: float = 0.5
    saliency_batch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.sparsity <= 1, "method.sparsity", self.sparsity, "must be in (0, 1]")
        require(self.saliency_batch >= 1, "method.saliency_batch", self.saliency_batch, "must be >= 1")


def saliency_masks(model: VisionClassifier, images: torch.Tensor, labels: torch.Tensor, params: dict[str, Any], *,
                   sparsity: float, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Boolean masks of the top-``sparsity`` weights by |gradient of the summed forget CE| (one global threshold)."""
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    with evaluating(model):
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            loss = F.cross_entropy(model(x, y), y, reduction="sum")
            for n, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
                if g is not None:
                    grads[n] += g
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    keep = max(1, round(sparsity * flat.numel()))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {n: g.abs() >= threshold for n, g in grads.items()}


@METHODS.register("salun")
class SalUn(FineTuneMethod):
    config_class = SalUnConfig

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        super().setup_task(model, task)
        self.named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        assert task.forget_data is not None, "the saliency needs the forget training subset"
        self.masks = saliency_masks(self.model, task.forget_data.images, task.forget_data.labels, self.named,
                                    sparsity=self.config.sparsity, batch_size=self.config.saliency_batch,
                                    device=task.device)
        self.start = {n: p.detach().clone() for n, p in self.named.items()}
        for n, p in self.named.items():
            p.register_hook(lambda g, m=self.masks[n]: g * m)
        self.trainable = int(sum(m.sum() for m in self.masks.values()))

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, _ = self.forward_both(x_f, y_f, x_r, y_r)
        forget = F.cross_entropy(forget_logits, y_f)
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        return {"loss": forget + rehearsal, "forget_relabelled": forget, "retain": retain_ce}

    @torch.no_grad()
    def after_step(self) -> None:
        for n, p in self.named.items():
            p.copy_(torch.where(self.masks[n], p, self.start[n]))

    def diagnostics(self) -> dict[str, Any]:
        """The ratio is SalUn's mask: the share of weights allowed to change (the others never move)."""
        return {**super().diagnostics(), "ratio_meaning": "masked"}
