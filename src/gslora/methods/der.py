"""DER and DER++, Dark Experience Replay (Buzzega et al. 2020), as forgetting baselines.

DER:   CE(forget relabelled to random retained classes) + alpha * MSE(student logits, stored logits)
       on the retained batch (the rehearsal buffer);
DER++: DER + beta * CE on a second, independently drawn retained batch.
The stored logits are the model's at the request's start (the buffer is filled before the request),
as in the paper; the reference distils embeddings instead (its section 9.16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gslora.config import require
from gslora.methods.base import METHODS, TaskContext
from gslora.methods.finetune import FineTuneConfig, FineTuneMethod
from gslora.models import VisionClassifier


@dataclass
class DERConfig(FineTuneConfig):
    """Args:
        alpha: weight of the logit-matching term [0.5].
        beta: weight of CE on the second retained batch (DER++ only) [0.5].
        rehearsal: DER has no CE on the buffer [0].
    """

    alpha: float = 0.5
    beta: float = 0.0
    rehearsal: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha >= 0, "method.alpha", self.alpha, "must be >= 0")
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")


@dataclass
class DERPPConfig(DERConfig):
    beta: float = 0.5


@METHODS.register("der")
class DER(FineTuneMethod):
    config_class = DERConfig
    uses_teacher = True

    def setup_task(self, model: VisionClassifier, task: TaskContext) -> None:
        super().setup_task(model, task)
        self.buffer = task.retain_data

    def second_batch(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.buffer), (size,), generator=self.generator, device=self.generator.device).cpu()
        return self.buffer.images[idx].to(device), self.buffer.labels[idx].to(device)

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, retain_plain = self.forward_both(x_f, y_f, x_r, y_r)
        forget = F.cross_entropy(forget_logits, y_f)
        match = F.mse_loss(retain_plain, self.teacher_logits(x_r))
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        loss = forget + self.config.alpha * match + rehearsal
        terms = {"forget_relabelled": forget, "logit_match": match, "retain": retain_ce}
        if self.config.beta > 0:
            x2, y2 = self.second_batch(len(y_r), x_r.device)
            replay = F.cross_entropy(self.model(x2, y2), y2)
            loss = loss + self.config.beta * replay
            terms["replay"] = replay
        return {"loss": loss, **terms}


@METHODS.register("der_pp")
class DERPP(DER):
    """DER++: DER with the second-batch cross-entropy on (beta = 0.5)."""

    config_class = DERPPConfig
