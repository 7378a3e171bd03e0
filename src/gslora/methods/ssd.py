"""SSD, selective synaptic dampening (Foster et al. 2024): training-free forgetting.

Importance of each weight on a data set D: the diagonal Fisher E[(d CE / d theta)^2]. With I_f on the
forget subset and I_d on the reference data, every weight with I_f > selection * I_d is scaled by
min(dampening * I_d / I_f, 1). The paper's reference data is the whole training set, forget data included;
there the forget data are a few percent of it. When a request forgets 2 of 10 classes, I_d >= I_f / 5
for every weight and selection = 10 can select nothing, so the default reference is the retained subset
(``reference: all`` gives the paper's). The head stays as it is, like the
other baselines. No optimisation steps: the edit happens in ``end_task`` and counts in the seconds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from gslora.config import require
from gslora.data import ImageSet
from gslora.methods.anchored import estimate_importance
from gslora.methods.base import METHODS, Batch, Method, TaskContext
from gslora.models import VisionClassifier


@dataclass
class SSDConfig:
    """Args:
        selection: alpha, how much more a weight must matter to the forget data to be dampened [10].
        dampening: lambda, the dampening constant [1].
        reference: ``retain`` (the request's retained subset) or ``all`` (retained and forget) for I_d.
        importance_batch: batch size of the Fisher estimate.
    """

    selection: float = 10.0
    dampening: float = 1.0
    reference: str = "retain"
    importance_batch: int = 16

    def __post_init__(self) -> None:
        require(self.selection > 0, "method.selection", self.selection, "must be > 0")
        require(self.dampening > 0, "method.dampening", self.dampening, "must be > 0")
        require(self.reference in ("retain", "all"), "method.reference", self.reference, "must be retain or all")
        require(self.importance_batch >= 1, "method.importance_batch", self.importance_batch, "must be >= 1")


def dampen(params: dict[str, torch.nn.Parameter], forget_importance: dict[str, torch.Tensor],
           data_importance: dict[str, torch.Tensor], *, selection: float, dampening: float) -> int:
    """Scale the selected weights in place; returns how many were selected."""
    selected = 0
    with torch.no_grad():
        for n, p in params.items():
            i_f, i_d = forget_importance[n], data_importance[n]
            chosen = i_f > selection * i_d
            factor = (dampening * i_d / i_f.clamp(min=1e-30)).clamp(max=1.0)
            p.mul_(torch.where(chosen, factor, torch.ones_like(factor)))
            selected += int(chosen.sum())
    return selected


@METHODS.register("ssd")
class SSD(Method):
    config_class = SSDConfig
    training_free = True

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        self.model = copy.deepcopy(model)
        self.base_parameters = sum(p.numel() for p in model.parameters())
        head = {id(p) for p in self.model.head_module().parameters()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) not in head)
        self.selected = 0

    def training_step(self, forget_batch: Batch, retain_batch: Batch, *, epoch: int) -> dict[str, torch.Tensor]:
        raise RuntimeError("SSD is training-free; the engine takes no steps with it")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def end_task(self, task: TaskContext) -> VisionClassifier:
        assert self.model is not None and task.forget_data is not None and task.retain_data is not None
        reference = task.retain_data
        if self.config.reference == "all":
            reference = ImageSet.join(task.forget_data, task.retain_data)
        batch = self.config.importance_batch
        i_f = estimate_importance(self.model, task.forget_data, "fisher", batch_size=batch, device=task.device)
        i_d = estimate_importance(self.model, reference, "fisher", batch_size=batch, device=task.device)
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.selected = dampen(params, i_f, i_d, selection=self.config.selection, dampening=self.config.dampening)
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model.eval()

    def diagnostics(self) -> dict[str, Any]:
        return {"trainable_parameters": self.selected, "base_parameters": self.base_parameters,
                "trainable_ratio": self.selected / self.base_parameters,
                "ratio_meaning": "dampened"}  # SSD trains nothing: the share of weights it scaled down
