"""Loss terms as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bounded_forgetting_loss(forget_ce: torch.Tensor, bnd: float) -> torch.Tensor:
    """ReLU(BND - CE_forget): gradient ascent on the forget cross-entropy until it reaches ``bnd``."""
    return F.relu(bnd - forget_ce)
