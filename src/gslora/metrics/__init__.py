"""Forgetting metrics: accuracy by class set, H-Mean, efficiency. Depends only on torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> float | None:
    """Top-1 accuracy in percent over the samples whose label is in ``class_ids``; ``None`` if none are."""
    mask = torch.isin(labels, torch.as_tensor(list(class_ids), dtype=labels.dtype))
    if not mask.any():
        return None
    return 100.0 * (predictions[mask] == labels[mask]).float().mean().item()


def h_mean(acc_f_drop: float, acc_r: float) -> float:
    """H = 2 * dAcc_f * Acc_r / (dAcc_f + Acc_r), with a negative drop counted as 0 (nothing forgotten)."""
    drop = max(acc_f_drop, 0.0)
    return 0.0 if drop + acc_r <= 0 else 2.0 * drop * acc_r / (drop + acc_r)


def request_metrics(*, acc_f: float, acc_r: float, acc_o: float | None, acc_f_before: float,
                    acc_r_before: float, acc_f_original: float) -> dict[str, float | None]:
    """All per-request accuracies (percent) and the H-Mean variants.

    ``h_mean`` measures the drop from the model just before the request; ``h_mean_original`` from
    the original (pre-trained) model; ``h_max`` is the best attainable H (forget everything, lose
    nothing): the formula with dAcc_f = ``acc_f_before`` and Acc_r = ``acc_r_before``.
    """
    return {
        "acc_f": acc_f,
        "acc_r": acc_r,
        "acc_o": acc_o,
        "acc_f_before": acc_f_before,
        "acc_r_before": acc_r_before,
        "acc_f_original": acc_f_original,
        "h_mean": h_mean(acc_f_before - acc_f, acc_r),
        "h_mean_original": h_mean(acc_f_original - acc_f, acc_r),
        "h_max": h_mean(acc_f_before, acc_r_before),
    }


def parameter_ratio(trainable: int, total: int) -> float:
    """Trainable parameters as a fraction of the base model's parameters."""
    return trainable / total if total else 0.0
