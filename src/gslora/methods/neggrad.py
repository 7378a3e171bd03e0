"""Gradient ascent and NegGrad+ (Kurmanji et al. 2023): raise the loss on forget data with true labels.

Loss: retain_weight * CE(retain) - (1 - retain_weight) * CE(forget). ``gradient_ascent`` is the pure
form (retain_weight 0); ``neggrad_plus`` keeps the retained cross-entropy (retain_weight 0.9). The ascent
is unbounded, unlike GS-LoRA's ReLU(BND - CE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from gslora.config import require
from gslora.methods.base import METHODS
from gslora.methods.finetune import FineTuneMethod


@dataclass
class NegGradConfig:
    """Args:
        retain_weight: beta in [0, 1): weight of CE(retain); the forget ascent has 1 - beta [0.9].
    """

    retain_weight: float = 0.9

    def __post_init__(self) -> None:
        require(0 <= self.retain_weight < 1, "method.retain_weight", self.retain_weight, "must be in [0, 1)")


@dataclass
class GradientAscentConfig(NegGradConfig):
    retain_weight: float = 0.0


@METHODS.register("neggrad_plus")
class NegGradPlus(FineTuneMethod):
    config_class = NegGradConfig
    relabel = False

    def loss_terms(self, x_f, y_f, x_r, y_r, *, epoch):
        forget_logits, retain_logits, _, _ = self.forward_both(x_f, y_f, x_r, y_r)
        forget_ce = F.cross_entropy(forget_logits, y_f)
        retain = F.cross_entropy(retain_logits, y_r)
        beta = self.config.retain_weight
        loss = beta * retain - (1 - beta) * forget_ce
        return {"loss": loss, "forget_ce": forget_ce, "retain": retain}


@METHODS.register("gradient_ascent")
class GradientAscent(NegGradPlus):
    """Pure gradient ascent on the forget data (retain_weight 0)."""

    config_class = GradientAscentConfig
