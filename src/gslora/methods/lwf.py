"""LwF, Learning without Forgetting (Li and Hoiem 2016), as a forgetting baseline.

Loss: CE(forget relabelled to random retained classes) + kd * T^2 KL(teacher || student)_T on the
retained batch + rehearsal * CE(retain), with the teacher the frozen model at the request's start.
Unlike the reference (section 9.14: log of log-softmax, NaNs zeroed), the distillation term is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from gslora.config import require
from gslora.methods.base import METHODS
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod, kd_loss


@dataclass
class LwFConfig(FineTuneConfig):
    """Args:
        kd: weight of the distillation term [0.5].
        temperature: distillation temperature [2].
        rehearsal: weight of CE on the retained batch [10, the reference's lambda_r].
    """

    kd: float = 0.5
    temperature: float = 2.0
    rehearsal: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.kd >= 0, "method.kd", self.kd, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")


@METHODS.register("lwf")
class LwF(FineTuneMethod):
    config_class = LwFConfig
    uses_teacher = True

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, retain_plain = self.forward_both(x_f, y_f, x_r, y_r)
        forget = F.cross_entropy(forget_logits, y_f)
        distill = kd_loss(retain_plain, self.teacher_logits(x_r), self.config.temperature)
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        loss = forget + self.config.kd * distill + rehearsal
        return {"loss": loss, "forget_relabelled": forget, "distill": distill, "retain": retain_ce}
