"""Forgetting metrics: accuracy by class set, H-Mean, efficiency. Depends only on torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> float | None:
    """Top-1 accuracy in percent over the samples whose label is in ``class_ids``; ``None`` if none are."""
    mask = torch.isin(labels, torch.as_tensor(list(class_ids), dtype=labels.dtype, device=labels.device))
    if not mask.any():
        return None
    return 100.0 * (predictions[mask] == labels[mask]).float().mean().item()


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy in percent of each class (``None`` for a class without test images)."""
    return [accuracy(predictions, labels, [c]) for c in range(num_classes)]


def taken_for(predictions: torch.Tensor, labels: torch.Tensor, classes: list[str], top: int = 3) -> dict[str, dict]:
    """Per class, the other classes its images are called most often (up to ``top``, share of its images in percent,
    largest first; classes never called are left out): where a class's lost accuracy went. From torchmetrics'
    multiclass confusion matrix (rows: the true class)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    matrix = multiclass_confusion_matrix(predictions, labels, num_classes=len(classes))
    out = {}
    for c, name in enumerate(classes):
        total = int(matrix[c].sum())
        counts = [(int(matrix[c, k]), k) for k in range(len(classes)) if k != c and int(matrix[c, k]) > 0]
        out[name] = {classes[k]: 100.0 * n / total for n, k in sorted(counts, key=lambda x: (-x[0], x[1]))[:top]}
    return out


def h_mean(acc_f_drop: float, acc_r: float) -> float:
    """H = 2 * dAcc_f * Acc_r / (dAcc_f + Acc_r), with a negative drop counted as 0 (nothing forgotten)."""
    drop = max(acc_f_drop, 0.0)
    return 0.0 if drop + acc_r <= 0 else 2.0 * drop * acc_r / (drop + acc_r)


def request_metrics(*, acc_f: float, acc_r: float, acc_o: float | None, acc_f_before: float,
                    acc_r_before: float, acc_f_original: float, acc_m: float | None = None,
                    acc_m_before: float | None = None) -> dict[str, float | None]:
    """All per-request accuracies (percent) and the H-Mean variants.

    ``h_mean`` measures the drop from the model just before the request; ``h_mean_original`` from
    the original (pre-trained) model; ``h_exact`` is the H of an exact request, one that forgets every
    forget-class sample and leaves Acc_r as it was (the formula with dAcc_f = ``acc_f_before`` and Acc_r =
    ``acc_r_before``): H above it means retained accuracy rose. ``acc_m`` is the accuracy on retained
    classes without training data (also part of ``acc_r``).
    """
    return {
        "acc_f": acc_f,
        "acc_r": acc_r,
        "acc_o": acc_o,
        "acc_m": acc_m,
        "acc_m_before": acc_m_before,
        "acc_f_before": acc_f_before,
        "acc_r_before": acc_r_before,
        "acc_f_original": acc_f_original,
        "h_mean": h_mean(acc_f_before - acc_f, acc_r),
        "h_mean_original": h_mean(acc_f_original - acc_f, acc_r),
        "h_exact": h_mean(acc_f_before, acc_r_before),
    }


def parameter_ratio(trainable: int, total: int) -> float:
    """Trainable parameters as a fraction of the base model's parameters."""
    return trainable / total if total else 0.0


def tar_at_far(genuine: torch.Tensor, impostor: torch.Tensor, far: float) -> float:
    """True-accept rate in percent at the score threshold where ``far`` of the impostor pairs are accepted.

    A pair is accepted when its score is strictly above the threshold, the (1 - far) quantile of the
    impostor scores.
    """
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("TAR@FAR needs genuine and impostor pairs")
    threshold = torch.quantile(impostor.double(), 1.0 - far, interpolation="higher")
    return 100.0 * (genuine.double() > threshold).float().mean().item()


def verification(embeddings: torch.Tensor, labels: torch.Tensor, class_sets: dict[str, Sequence[int]], *,
                 fars: Sequence[float] = (0.01, 0.001)) -> dict[str, dict[str, float | None]]:
    """Face verification by cosine similarity of embeddings, over all pairs of test images.

    One threshold per FAR, set on all impostor pairs (different identities): the operating point of
    a deployed system. Then, per class set, TAR = the share of its genuine pairs (same identity)
    above that threshold. Returns ``{set name: {"far=0.01": tar, ...}}``; ``None`` where a set has
    no genuine pair.
    """
    z = torch.nn.functional.normalize(embeddings.double(), dim=1)
    i, j = torch.triu_indices(len(z), len(z), offset=1)
    scores = (z[i] * z[j]).sum(dim=1)
    same = labels[i] == labels[j]
    impostor = scores[~same]
    out: dict[str, dict[str, float | None]] = {}
    for name, ids in class_sets.items():
        in_set = torch.isin(labels[i], torch.as_tensor(list(ids), dtype=labels.dtype)) & same
        out[name] = {f"far={far:g}": tar_at_far(scores[in_set], impostor, far) if in_set.any() else None
                     for far in fars}
    return out
