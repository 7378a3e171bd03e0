"""Bootstrap confidence intervals and seeded balanced samples, shared by the verification figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, *, resamples: int, seed: int,
                 level: float = 0.95) -> list[float] | None:
    """Percentile interval of ``statistic(indices)`` over ``resamples`` bootstrap draws of ``n`` indices."""
    if resamples <= 0 or n == 0:
        return None
    rng = np.random.default_rng(seed)
    return _percentiles([statistic(rng.integers(0, n, n)) for _ in range(resamples)], level)


def paired_resamples(n_a: int, n_b: int, *, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``resamples`` bootstrap draws of two independent samples (members and non-members): arrays of indices of shape
    (resamples, n_a) and (resamples, n_b), drawn in the order ``paired_bootstrap_ci`` draws them."""
    rng = np.random.default_rng(seed)
    a, b = np.empty((resamples, n_a), dtype=np.int64), np.empty((resamples, n_b), dtype=np.int64)
    for r in range(resamples):
        a[r], b[r] = rng.integers(0, n_a, n_a), rng.integers(0, n_b, n_b)
    return a, b


def paired_bootstrap_ci(statistic: Callable[[np.ndarray, np.ndarray], float | None], n_a: int, n_b: int, *,
                        resamples: int, seed: int, level: float = 0.95) -> list[float] | None:
    """As ``bootstrap_ci`` for a statistic of two independent samples (members and non-members), each resampled."""
    if resamples <= 0 or not n_a or not n_b:
        return None
    a, b = paired_resamples(n_a, n_b, resamples=resamples, seed=seed)
    return _percentiles([statistic(i, j) for i, j in zip(a, b)], level)


def rank_auc(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The ROC AUC of scores ``positive`` (..., n_a) against ``negative`` (..., n_b) along the last axis, for many
    samples at once: the Mann-Whitney U of the positives over n_a * n_b (ties count one half), which is the area
    under the ROC curve that ``sklearn.metrics.roc_auc_score`` integrates."""
    from scipy.stats import rankdata

    n_a, n_b = positive.shape[-1], negative.shape[-1]
    ranks = rankdata(np.concatenate([positive, negative], axis=-1), axis=-1)  # average ranks of ties
    return (ranks[..., :n_a].sum(axis=-1) - n_a * (n_a + 1) / 2) / (n_a * n_b)


def paired_bootstrap_auc_ci(positive: np.ndarray, negative: np.ndarray, *, resamples: int, seed: int,
                            level: float = 0.95) -> list[float] | None:
    """``paired_bootstrap_ci`` of the AUC of ``positive`` against ``negative`` scores, the same draws, every resample's
    AUC computed at once (``rank_auc``) instead of one ``roc_auc_score`` call each."""
    if resamples <= 0 or not len(positive) or not len(negative):
        return None
    a, b = paired_resamples(len(positive), len(negative), resamples=resamples, seed=seed)
    return _percentiles(list(rank_auc(positive[a], negative[b])), level)


def _percentiles(values: list[float | None], level: float) -> list[float] | None:
    """The central ``level`` interval of the finite ``values`` (None when there are none)."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def balanced_sample(labels: torch.Tensor, classes: Sequence[int], limit: int, *, seed: int) -> torch.Tensor:
    """Indices of at most ``limit`` samples of ``classes``, as even across the classes as they allow."""
    generator = torch.Generator().manual_seed(seed)
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    pools = [p[torch.randperm(len(p), generator=generator)] for p in pools if len(p)]
    if not pools:
        return torch.empty(0, dtype=torch.long)
    picked, taken = [], [0] * len(pools)
    while sum(taken) < limit and any(t < len(p) for t, p in zip(taken, pools)):
        for i, pool in enumerate(pools):
            if taken[i] < len(pool) and sum(taken) < limit:
                picked.append(pool[taken[i]])
                taken[i] += 1
    return torch.sort(torch.stack(picked)).values
