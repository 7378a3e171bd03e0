"""DER and DER++, Dark Experience Replay (Buzzega et al. 2020), as forgetting baselines.

DER:   CE(forget relabelled to random retained classes) + logit_weight * MSE(student logits, stored logits)
       on the retained batch (the rehearsal buffer); the paper's alpha;
DER++: DER + replay_weight * CE on a second, independently drawn retained batch; the paper's beta.
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
    """Args (named for what they weigh; the DER paper's alpha and beta, which mean other things in GS-LoRA):
        logit_weight: weight of the logit-matching term [alpha, 0.5].
        replay_weight: weight of CE on the second retained batch (DER++ only) [beta, 0.5].
        rehearsal: DER has no CE on the buffer [0].
    """

    logit_weight: float = 0.5
    replay_weight: float = 0.0
    rehearsal: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.logit_weight >= 0, "method.logit_weight", self.logit_weight, "must be >= 0")
        require(self.replay_weight >= 0, "method.replay_weight", self.replay_weight, "must be >= 0")


@dataclass
class DERPPConfig(DERConfig):
    replay_weight: float = 0.5


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
        loss = forget + self.config.logit_weight * match + rehearsal
        terms = {"forget_relabelled": forget, "logit_match": match, "retain": retain_ce}
        if self.config.replay_weight > 0:
            x2, y2 = self.second_batch(len(y_r), x_r.device)
            replay = F.cross_entropy(self.model(x2, y2), y2)
            loss = loss + self.config.replay_weight * replay
            terms["replay"] = replay
        return {"loss": loss, **terms}


@METHODS.register("der_pp")
class DERPP(DER):
    """DER++: DER with the second-batch cross-entropy on (replay_weight = 0.5)."""

    config_class = DERPPConfig
