"""Random-label fine-tuning: train the forget data towards random retained classes, with rehearsal.

Loss: CE(forget relabelled to random retained classes, redrawn every step) + rehearsal * CE(retain).
"""

from __future__ import annotations

import torch.nn.functional as F

from gslora.methods.base import METHODS
from gslora.methods.finetune import FineTuneMethod


@METHODS.register("random_label")
class RandomLabel(FineTuneMethod):
    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, _ = self.forward_both(x_f, y_f, x_r, y_r)
        forget = F.cross_entropy(forget_logits, y_f)
        rehearsal, retain_ce = self.rehearsal_terms(retain_logits, y_r)
        return {"loss": forget + rehearsal, "forget_relabelled": forget, "retain": retain_ce}
