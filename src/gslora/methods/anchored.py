"""Anchored-penalty baselines: L2, EWC (Kirkpatrick et al. 2017) and MAS (Aljundi et al. 2018).

Loss: CE(forget relabelled to random retained classes) + rehearsal * CE(retain)
      + lambda * sum_i Omega_i (theta_i - theta*_i)^2,
with theta* the parameters at the start of the request and Omega the importance:

- ``ones``: Omega = 1 (L2);
- ``fisher``: the diagonal empirical Fisher of the retained data, E[(d CE / d theta)^2] (EWC);
- ``mas``: E[|d ||f(x)||^2 / d theta|] over the retained data, f the logits (MAS).

Importance is estimated on the request's retained training subset (the reference used the full retained
split after the first task: its section 9.18), in batches; it counts in the request's seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gslora.config import require
from gslora.data import ImageSet
from gslora.methods.base import METHODS, TaskContext
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod
from gslora.models import VisionClassifier, evaluating

IMPORTANCES: dict[str, Callable[[VisionClassifier, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "fisher": lambda model, x, y: F.cross_entropy(model(x), y),
    "mas": lambda model, x, y: model(x).pow(2).sum(dim=1).mean(),
}


@dataclass
class AnchoredConfig(FineTuneConfig):
    """Args:
        importance: ``ones`` (L2), ``fisher`` (EWC) or ``mas`` (MAS).
        penalty: lambda, the weight of the anchored penalty [reference 4-task: L2 0.1, EWC 10, MAS 0.005].
        importance_batch: batch size of the importance estimate.
    """

    importance: str = "ones"
    penalty: float = 0.1
    importance_batch: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.importance in ("ones", *IMPORTANCES), "method.importance", self.importance,
                "must be ones, fisher or mas")
        require(self.penalty >= 0, "method.penalty", self.penalty, "must be >= 0")
        require(self.importance_batch >= 1, "method.importance_batch", self.importance_batch, "must be >= 1")


def estimate_importance(model: VisionClassifier, data: ImageSet, kind: str, *, batch_size: int,
                        device: torch.device) -> dict[str, torch.Tensor]:
    """Per-parameter importance of the trainable parameters of ``model`` (eval mode, no dropout).

    ``fisher``: mean over batches of (batch-mean gradient)^2 * batch size, the usual batched estimate of
    the per-sample squared gradient. ``mas``: mean over batches of |gradient| of the mean squared logit norm.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = 0
    with evaluating(model):
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size].to(device)
            y = data.labels[start:start + batch_size].to(device)
            grads = torch.autograd.grad(IMPORTANCES[kind](model, x, y), list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    total[n] += g.pow(2) * len(x) if kind == "fisher" else g.abs()
            batches += 1
    return {n: t / max(batches, 1) for n, t in total.items()}


def anchored_penalty(named: dict[str, torch.nn.Parameter], anchor: dict[str, torch.Tensor],
                     importance: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """sum_i Omega_i (theta_i - theta*_i)^2; ``importance`` None means Omega = 1."""
    terms = [((p - anchor[n]).pow(2) * (importance[n] if importance is not None else 1.0)).sum()
             for n, p in named.items()]
    return torch.stack(terms).sum()


@METHODS.register("anchored")
class Anchored(FineTuneMethod):
    config_class = AnchoredConfig

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        super().setup_task(model, task)
        self.named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.anchor = {n: p.detach().clone() for n, p in self.named.items()}
        self.importance = None
        if self.config.importance != "ones":
            assert task.retain_data is not None, "the importance needs the retained training subset"
            self.importance = estimate_importance(self.model, task.retain_data, self.config.importance,
                                                  batch_size=self.config.importance_batch, device=task.device)

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, _ = self.forward_both(x_f, y_f, x_r, y_r)
        forget = F.cross_entropy(forget_logits, y_f)
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        penalty = anchored_penalty(self.named, self.anchor, self.importance)
        loss = forget + rehearsal + self.config.penalty * penalty
        return {"loss": loss, "forget_relabelled": forget, "retain": retain_ce, "penalty": penalty}


@dataclass
class L2Config(AnchoredConfig):
    importance: str = "ones"
    penalty: float = 0.1


@dataclass
class EWCConfig(AnchoredConfig):
    importance: str = "fisher"
    penalty: float = 10.0


@dataclass
class MASConfig(AnchoredConfig):
    importance: str = "mas"
    penalty: float = 0.005


@METHODS.register("l2")
class L2(Anchored):
    """``anchored`` with importance ``ones`` and the reference's lambda."""

    config_class = L2Config


@METHODS.register("ewc")
class EWC(Anchored):
    """``anchored`` with the Fisher importance and the reference's lambda."""

    config_class = EWCConfig


@METHODS.register("mas")
class MAS(Anchored):
    """``anchored`` with the MAS importance and the reference's lambda."""

    config_class = MASConfig
