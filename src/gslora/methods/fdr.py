"""FDR, function-distance regularisation (Benjamin et al. 2019), as a forgetting baseline.

Loss: CE(forget relabelled to random retained classes) + lambda * mean_i ||f(x_i) - f*(x_i)||_2 on the
retained batch, f* the frozen model at the request's start, on plain logits (the reference distils
logits that include the CosFace margin: its section 9.16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from gslora.config import require
from gslora.methods.base import METHODS
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod


@dataclass
class FDRConfig(FineTuneConfig):
    """Args:
        penalty: lambda, the weight of the function distance [50, the reference's].
        rehearsal: FDR has no CE on retained data [0].
    """

    penalty: float = 50.0
    rehearsal: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.penalty >= 0, "method.penalty", self.penalty, "must be >= 0")


@METHODS.register("fdr")
class FDR(FineTuneMethod):
    config_class = FDRConfig
    uses_teacher = True

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, retain_plain = self.forward_both(x_f, y_f, x_r, y_r)
        forget = F.cross_entropy(forget_logits, y_f)
        distance = (retain_plain - self.teacher_logits(x_r)).norm(dim=1).mean()
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        loss = forget + self.config.penalty * distance + rehearsal
        return {"loss": loss, "forget_relabelled": forget, "function_distance": distance, "retain": retain_ce}
