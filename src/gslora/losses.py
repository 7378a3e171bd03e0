"""Loss terms as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bounded_forgetting_loss(forget_ce: torch.Tensor, bnd: float) -> torch.Tensor:
    """ReLU(BND - CE_forget): gradient ascent on the forget cross-entropy until it reaches ``bnd``."""
    return F.relu(bnd - forget_ce)


def binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))) of independent sigmoid scores (a detector's
    per-class scores): 0 where student and teacher agree."""
    p = torch.sigmoid(teacher_logits)
    return F.binary_cross_entropy_with_logits(student_logits, p, reduction="none") - \
        F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="none")


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding per class: ((C, D) prototypes, (C,) bool mask of classes that have samples)."""
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=num_classes).to(embeddings.dtype)
    present = counts > 0
    return sums / counts.clamp(min=1).unsqueeze(1), present


def prototype_distances(z: torch.Tensor, prototypes: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Per-sample distance (N,) of embeddings (N, D) to their prototypes (N, D).

    ``kl``: the reference's KL(softmax(p) || softmax(z)) over feature dimensions, T = 1.
    ``cosine``: 1 - cos(z, p).
    """
    if kind == "kl":
        return F.kl_div(F.log_softmax(z, dim=1), F.log_softmax(prototypes, dim=1), log_target=True,
                        reduction="none").sum(1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(z, prototypes, dim=1)
    raise ValueError(f"unknown prototype distance {kind!r}; use kl or cosine")


def prototype_distance(z: torch.Tensor, prototypes: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Mean distance of embeddings (N, D) to their prototypes (N, D) (the reference's batch mean)."""
    return prototype_distances(z, prototypes, kind).mean()


def nearest_prototype(z: torch.Tensor, prototypes: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Index (N,) of the nearest of ``prototypes`` (C, D) to each embedding of ``z`` (N, D) under ``kind``."""
    n, c = len(z), len(prototypes)
    pairs = prototype_distances(z.repeat_interleave(c, 0), prototypes.repeat(n, 1), kind)  # (N * C,), row-major
    return pairs.view(n, c).argmin(1)


def prototype_push_loss(z: torch.Tensor, prototypes: torch.Tensor, bnd: float, kind: str = "kl") -> torch.Tensor:
    """ReLU(BND_pro - d(z, p)): push forgotten classes' embeddings away from their prototypes, up to BND_pro."""
    return F.relu(bnd - prototype_distance(z, prototypes, kind))


def prototype_pull_loss(z: torch.Tensor, prototypes: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """d(z, p): pull retained classes' embeddings toward their prototypes."""
    return prototype_distance(z, prototypes, kind)


def absorb_loss(z: torch.Tensor, prototypes: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """d(z, p_nearest): pull forgotten embeddings (N, D) to the nearest of the retained classes' prototypes (C, D),
    so that a forgotten class dissolves into the classes the model keeps instead of moving as one cluster. The
    target is chosen without gradient (an assignment, as in k-means)."""
    target = nearest_prototype(z.detach(), prototypes, kind)
    return prototype_distance(z, prototypes[target], kind)


def _cosines(z: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarities of the embeddings (N, D)."""
    zn = F.normalize(z, dim=1)
    return zn @ zn.T


def impostor_similarity(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Mean cosine similarity (0-d) of the pairs of embeddings (N, D) whose labels differ: how alike two different
    people (or classes) look to the model. None when no such pair exists."""
    different = labels[:, None] != labels[None, :]
    return _cosines(z)[different].mean() if different.any() else None


def scatter_loss(z: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over the pairs of embeddings (N, D) with the same label of ReLU(cos(z_i, z_j) - margin): two images of
    one forgotten identity may look no more alike than ``margin`` (two different people), so the identity no
    longer verifies and a linear probe finds no cluster. 0 when the batch holds no such pair."""
    same = torch.triu(labels[:, None] == labels[None, :], diagonal=1)
    if not same.any():
        return z.sum() * 0.0
    return F.relu(_cosines(z)[same] - margin).mean()
