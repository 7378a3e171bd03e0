"""SCRUB and SCRUB-S (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning").

The student starts from the model at the request's start, which is also the frozen teacher.
Min term (every step):  gamma * CE(retain) + kd * KL_T(teacher || student) on the retained batch.
Max term (the first ``max_fraction`` of the epochs): - KL_T(teacher || student) on the forget batch,
with true labels (SCRUB does not relabel).
SCRUB alternates separate max and min steps; here both share one optimiser step (simultaneous descent-
ascent) so that every method takes the engine's number of steps.
SCRUB-S adds ``smoothing`` * sum_p ||theta_p - theta_avg_p||_F towards a running average of the weights
(beta 0.1, updated once per epoch), as the reference's ``sgda_utils``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gslora.config import require
from gslora.methods.base import METHODS, TaskContext
from gslora.methods.finetune import FineTuneMethod, kd_loss
from gslora.models import VisionClassifier


@dataclass
class SCRUBConfig:
    """Args (the SCRUB paper's names):
        gamma: the weight of CE on the retained batch [0.99].
        kd: alpha, the weight of the retained distillation [0.001].
        temperature: distillation temperature [2].
        max_fraction: share of the epochs that include the max (forget) term [0.5: 5 of 10 passes].
        smoothing: SCRUB-S's weight towards the averaged weights [0 for SCRUB; 0.1 for SCRUB-S].
        average_beta: the running average's step [0.1].
    """

    gamma: float = 0.99
    kd: float = 0.001
    temperature: float = 2.0
    max_fraction: float = 0.5
    smoothing: float = 0.0
    average_beta: float = 0.1

    def __post_init__(self) -> None:
        require(self.gamma >= 0, "method.gamma", self.gamma, "must be >= 0")
        require(self.kd >= 0, "method.kd", self.kd, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        require(0 <= self.max_fraction <= 1, "method.max_fraction", self.max_fraction, "must be in [0, 1]")
        require(self.smoothing >= 0, "method.smoothing", self.smoothing, "must be >= 0")
        require(0 < self.average_beta <= 1, "method.average_beta", self.average_beta, "must be in (0, 1]")


@dataclass
class SCRUBSConfig(SCRUBConfig):
    smoothing: float = 0.1


@METHODS.register("scrub")
class SCRUB(FineTuneMethod):
    config_class = SCRUBConfig
    relabel = False
    uses_teacher = True

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        super().setup_task(model, task)
        self.max_epochs = round(self.config.max_fraction * task.epochs)
        self.named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().clone() for n, p in self.named.items()}
        self.averaged_epoch = 0

    def update_average(self, epoch: int) -> None:
        """Once per epoch: theta_avg <- (1 - beta) theta_avg + beta theta."""
        if epoch != self.averaged_epoch:
            self.averaged_epoch = epoch
            with torch.no_grad():
                for n, p in self.named.items():
                    self.average[n].lerp_(p, self.config.average_beta)

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        _, retain_logits, forget_plain, retain_plain = self.forward_both(x_f, y_f, x_r, y_r)
        retain_ce = F.cross_entropy(retain_logits, y_r)
        retain_kl = kd_loss(retain_plain, self.teacher_logits(x_r), self.config.temperature)
        loss = self.config.gamma * retain_ce + self.config.kd * retain_kl
        terms = {"retain": retain_ce, "retain_kl": retain_kl}
        if epoch < self.max_epochs:
            forget_kl = kd_loss(forget_plain, self.teacher_logits(x_f), self.config.temperature)
            loss = loss - forget_kl
            terms["forget_kl"] = forget_kl
        if self.config.smoothing > 0:
            self.update_average(epoch)
            smooth = torch.stack([(p - self.average[n]).norm() for n, p in self.named.items()]).sum()
            loss = loss + self.config.smoothing * smooth
            terms["smoothing"] = smooth
        return {"loss": loss, **terms}


@METHODS.register("scrub_s")
class SCRUBS(SCRUB):
    """SCRUB with smoothing towards the running-average weights (SCRUB-S)."""

    config_class = SCRUBSConfig
