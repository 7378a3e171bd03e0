"""Classification heads that replace a family's linear head: CosFace for face recognition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosFaceHead(nn.Module):
    """CosFace / large-margin cosine head (Wang et al., CVPR 2018).

    logits_j = s * cos(theta_j), and s * (cos(theta_y) - m) for the label y when labels are given.
    The reference uses s = 64, m = 0.35, a Xavier-initialised weight and no bias.

    Args:
        in_features: embedding size.
        num_classes: number of identities.
        s: scale.
        m: additive cosine margin.
    """

    def __init__(self, in_features: int, num_classes: int, *, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        if labels is not None:
            cosine = cosine - self.m * F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return self.s * cosine
