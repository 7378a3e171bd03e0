"""Membership inference: a population attack in the style of SalUn and SCRUB.

Per image the attack reads the model's loss on the true label, its confidence in it and the entropy of its
softmax. A logistic regression (scikit-learn) learns to tell the retained classes' training images (members) from
their test images (non-members); it is then asked about the forgotten classes' training images against their test
images. After a good erasure those training images look like images the model never saw: attack AUC near 0.5 and
few of them called members, as for a model retrained without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gslora.verification.stats import paired_bootstrap_auc_ci, paired_bootstrap_ci


def attack_features(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(N, 3): cross-entropy on the true label, softmax confidence in it, softmax entropy."""
    log_p = F.log_softmax(logits.double(), dim=1)
    loss = -log_p.gather(1, labels.view(-1, 1)).squeeze(1)
    confidence = loss.neg().exp()
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return torch.stack([loss, confidence, entropy], dim=1).numpy()


def _roc_points(labels: np.ndarray, scores: np.ndarray, points: int = 40) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]]}


def fit_attack(member: np.ndarray, nonmember: np.ndarray, *, seed: int) -> tuple[Any, float]:
    """Fit the attack on half of each population and return it with its AUC on the other half (how well the
    attack tells members from non-members at all: near 0.5 means the model leaks little membership anyway)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(member), len(nonmember))
    member, nonmember = member[rng.permutation(len(member))[:n]], nonmember[rng.permutation(len(nonmember))[:n]]
    half = n // 2
    x_fit = np.concatenate([member[:half], nonmember[:half]])
    y_fit = np.concatenate([np.ones(half), np.zeros(half)])
    attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    attack.fit(x_fit, y_fit)
    x_check = np.concatenate([member[half:], nonmember[half:]])
    y_check = np.concatenate([np.ones(n - half), np.zeros(n - half)])
    check = float(roc_auc_score(y_check, attack.predict_proba(x_check)[:, 1])) if n - half > 0 else None
    attack.fit(np.concatenate([member, nonmember]), np.concatenate([np.ones(n), np.zeros(n)]))
    return attack, check


def attack_results(attack: Any, train: np.ndarray, test: np.ndarray, *, resamples: int, seed: int) -> dict[str, Any]:
    """AUC of the attack on ``train`` (positives) vs ``test`` images of a class group and the share of ``train``
    called members, each with a bootstrap 95% interval, and the ROC curve."""
    from sklearn.metrics import roc_auc_score

    p_train, p_test = attack.predict_proba(train)[:, 1], attack.predict_proba(test)[:, 1]
    share = float((p_train >= 0.5).mean())
    labels, scores = np.concatenate([np.ones(len(p_train)), np.zeros(len(p_test))]), np.concatenate([p_train, p_test])
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "auc_ci": paired_bootstrap_auc_ci(p_train, p_test, resamples=resamples, seed=seed),
        "member_share": share,
        "member_share_ci": paired_bootstrap_ci(lambda i, _j: float((p_train[i] >= 0.5).mean()), len(p_train), 1,
                                               resamples=resamples, seed=seed + 1),
        "roc": _roc_points(labels, scores),
        "n_train": len(p_train), "n_test": len(p_test),
    }
