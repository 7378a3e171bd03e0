"""What the baselines share: full fine-tuning of the backbone with the head frozen (as in the reference),
a frozen teacher, forget labels redrawn among the retained classes, and masked or frozen subsets.

Each baseline subclasses ``FineTuneMethod`` and implements ``loss_terms``; the engine's loop, optimiser
and schedule are the same as GS-LoRA's, so every method sees the same batches and the same steps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gslora.config import require
from gslora.methods.base import Batch, Method, TaskContext
from gslora.models import VisionClassifier


@dataclass
class FineTuneConfig:
    """Settings every full-fine-tuning baseline has.

    Args:
        rehearsal: weight of the cross-entropy on the retained batch (the rehearsal buffer of the ``*``
            variants); 0 leaves the retained data to the method's own terms.
    """

    rehearsal: float = 1.0

    def __post_init__(self) -> None:
        require(self.rehearsal >= 0, "method.rehearsal", self.rehearsal, "must be >= 0")


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with gradients off (a teacher)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation: T^2 * KL(softmax(t / T) || softmax(s / T)), batch mean."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), log_target=True,
                    reduction="batchmean") * temperature ** 2


class FineTuneMethod(Method):
    """Trains every parameter except the head's on a deep copy of the model.

    Subclasses set ``relabel`` (forget samples get a random retained class, redrawn every step; otherwise
    their true labels), ``uses_teacher`` (a frozen copy of the model at the request's start) and implement
    ``loss_terms``.
    """

    config_class: ClassVar[type] = FineTuneConfig
    relabel: ClassVar[bool] = True
    uses_teacher: ClassVar[bool] = False

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        self.model = copy.deepcopy(model)
        self.base_parameters = sum(p.numel() for p in model.parameters())
        for p in self.model.parameters():
            p.requires_grad_(True)
        for p in self.frozen_parameters(self.model):
            p.requires_grad_(False)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.teacher = frozen_copy(model) if self.uses_teacher else None
        with_data = [c for c in task.request.retain if c not in set(task.request.missing)]
        self.retain_classes = torch.tensor(with_data, device=task.device)
        self.generator = torch.Generator(device=task.device).manual_seed(7919 + task.request.index)
        self.request_index = task.request.index

    def frozen_parameters(self, model: VisionClassifier) -> Iterator[nn.Parameter]:
        """Parameters that stay fixed: the head (the reference's baselines freeze it)."""
        return model.head_module().parameters()

    def random_retained_labels(self, y_f: torch.Tensor) -> torch.Tensor:
        """For each forget sample, a retained class drawn uniformly (a wrong class by construction)."""
        pick = torch.randint(len(self.retain_classes), y_f.shape, generator=self.generator, device=y_f.device)
        return self.retain_classes[pick]

    def training_step(self, forget_batch: Batch, retain_batch: Batch, *, epoch: int) -> dict[str, torch.Tensor]:
        (x_f, y_f), (x_r, y_r) = forget_batch, retain_batch
        if self.relabel:
            y_f = self.random_retained_labels(y_f)
        return self.loss_terms(x_f, y_f, x_r, y_r, epoch=epoch)

    def loss_terms(self, x_f: torch.Tensor, y_f: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor, *,
                   epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_both(self, x_f: torch.Tensor, y_f: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One student forward over both batches: (forget logits, retain logits) with the margin on the
        given labels, for cross-entropy, and the same two without margin, for distillation."""
        logits, embedding = self.model.forward_features(torch.cat([x_r, x_f]), torch.cat([y_r, y_f]))
        plain = self.model.classify(embedding) if self.model.has_margin else logits
        n = len(y_r)
        return logits[n:], logits[:n], plain[n:], plain[:n]

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return self.teacher(images)

    def rehearsal_terms(self, retain_logits: torch.Tensor, y_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted term, raw CE) of the rehearsal cross-entropy on the retained batch."""
        ce = F.cross_entropy(retain_logits, y_r)
        return self.config.rehearsal * ce, ce

    def end_task(self, task: TaskContext) -> VisionClassifier:
        assert self.model is not None
        self.teacher = None
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model.eval()

    def diagnostics(self) -> dict[str, Any]:
        return {"trainable_parameters": self.trainable, "base_parameters": self.base_parameters,
                "trainable_ratio": self.trainable / self.base_parameters}
