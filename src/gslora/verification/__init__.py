"""Proof of forgetting beyond top-1 accuracy: the verification suite run after every request, for every request.

For a model and the class groups it must have forgotten (one group per erasure request), ``verify`` measures:

- membership inference (``membership``): attack AUC on each group's training vs test images, and the share of its
  training images the attack calls members; the attack is fitted on the retained classes;
- residual knowledge: a linear probe (scikit-learn logistic regression) on the model's frozen embeddings, fitted on
  half of a sample of training images of every class, the forgotten ones included: its accuracy on the other half of
  each group's training images (does the embedding still separate what the class was learned from?) and on the
  group's test images;
- relearn time (``relearn``): steps of k-shot fine-tuning until the group's test accuracy is back to half its value
  before its request, capped;
- for face models (a margin head): TAR at each FAR for the group's identities and the retained ones, and the cosine
  similarity of the group's test embeddings to their prototype in the original model.

The membership AUC and share, the probe accuracies and the prototype similarity carry bootstrap 95% intervals over
the images they are measured on (the fitted attack and probe held fixed, so fitting variance is not in them); relearn
steps and TAR are single measurements. Compare them with a model retrained without the groups (``reference``): that
is what "forgotten" should look like on this data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gslora.config import require
from gslora.data import Dataset, ImageSet
from gslora.engine.evaluate import logits_and_embeddings
from gslora.metrics import verification as tar_at_fars
from gslora.verification.membership import attack_features, attack_results, fit_attack
from gslora.verification.relearn import relearn_steps
from gslora.verification.stats import balanced_sample, bootstrap_ci

log = logging.getLogger(__name__)


@dataclass
class VerifyConfig:
    """What the verification suite measures and how much data it reads.

    Args:
        enabled: run the suite after every request, on every request of the run so far.
        membership, probe, relearn, faces: which figures to compute (faces: only for margin heads).
        max_images: at most this many images per population (members, non-members, probe fit, each group's
            training and test images), balanced across classes.
        bootstrap: resamples of each 95% interval (0: no intervals).
        relearn_shots, relearn_lr, relearn_batch, relearn_max_steps, relearn_eval_every: the relearn fine-tuning.
        seed: seed of every sample and of the relearn runs.
    """

    enabled: bool = True
    membership: bool = True
    probe: bool = True
    relearn: bool = True
    faces: bool = True
    max_images: int = 1000
    bootstrap: int = 200
    relearn_shots: int = 8
    relearn_lr: float = 1e-4
    relearn_batch: int = 16
    relearn_max_steps: int = 200
    relearn_eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.max_images >= 10, "verify.max_images", self.max_images, "must be >= 10")
        require(self.bootstrap >= 0, "verify.bootstrap", self.bootstrap, "must be >= 0")
        require(self.relearn_shots >= 1 and self.relearn_batch >= 1, "verify.relearn_shots", self.relearn_shots,
                "relearn_shots and relearn_batch must be >= 1")
        require(self.relearn_lr > 0 and math.isfinite(self.relearn_lr), "verify.relearn_lr", self.relearn_lr,
                "must be a positive number")
        require(self.relearn_max_steps >= 1 and self.relearn_eval_every >= 1, "verify.relearn_max_steps",
                self.relearn_max_steps, "relearn_max_steps and relearn_eval_every must be >= 1")


def _subset(split: ImageSet, classes: list[int], limit: int, seed: int) -> ImageSet:
    return split.subset(balanced_sample(split.labels, classes, limit, seed=seed))


def verify(model: torch.nn.Module, dataset: Dataset, groups: dict[str, list[int]], retained: list[int], *,
           config: VerifyConfig, device: torch.device, acc_before: dict[str, float] | None = None,
           original: torch.nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """Every figure of the suite for each forgotten class ``group`` (name -> class ids) of ``model``.

    Args:
        retained: the classes the model still recognises (the attack and the probe's reference).
        acc_before: per group, its test accuracy before its request (the relearn target is half of it).
        original: the original model (face prototypes); None skips the prototype similarity.
    """
    seed = config.seed
    out: dict[str, dict[str, Any]] = {name: {"classes": ids} for name, ids in groups.items()}
    cap = config.max_images

    if config.membership:
        members = _subset(dataset.train, retained, cap, seed)
        nonmembers = _subset(dataset.test, retained, cap, seed + 1)
        features = {}
        for key, split in (("member", members), ("nonmember", nonmembers)):
            logits, _ = logits_and_embeddings(model, split.images, device=device)
            features[key] = attack_features(logits, split.labels)
        attack, check = fit_attack(features["member"], features["nonmember"], seed=seed)
        for name, ids in groups.items():
            group = {}
            for key, split in (("train", _subset(dataset.train, ids, cap, seed + 2)),
                               ("test", _subset(dataset.test, ids, cap, seed + 3))):
                logits, _ = logits_and_embeddings(model, split.images, device=device)
                group[key] = attack_features(logits, split.labels)
            out[name]["mia"] = {**attack_results(attack, group["train"], group["test"], resamples=config.bootstrap,
                                                 seed=seed), "attack_auc_on_retained": check}

    if config.probe:
        out = _probe(model, dataset, groups, retained, out, config=config, device=device)

    if config.relearn:
        for name, ids in groups.items():
            before = (acc_before or {}).get(name)
            if before is None:
                continue
            test = _subset(dataset.test, ids, len(dataset.test), seed + 3)  # the population acc_before was measured on
            out[name]["relearn"] = relearn_steps(
                model, dataset.train, test, ids, retained, 0.5 * before, shots=config.relearn_shots,
                lr=config.relearn_lr, batch_size=config.relearn_batch, max_steps=config.relearn_max_steps,
                eval_every=config.relearn_eval_every, device=device, seed=seed)

    if config.faces and getattr(model, "has_margin", False):
        _faces(model, dataset, groups, retained, out, config=config, device=device, original=original)
    return out


def _probe(model: torch.nn.Module, dataset: Dataset, groups: dict[str, list[int]], retained: list[int],
           out: dict[str, dict[str, Any]], *, config: VerifyConfig, device: torch.device) -> dict[str, dict[str, Any]]:
    """A linear probe on frozen embeddings, fitted on half of a balanced sample of training images of every class
    (the forgotten ones included). Its accuracy on the other half of each group's training images says whether the
    embedding still separates the images the model learned the class from; on the group's test images, whether it
    still recognises the class at all."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    everything = [*retained, *(c for ids in groups.values() for c in ids)]
    sample = _subset(dataset.train, everything, 2 * config.max_images, config.seed + 4)
    _, z = logits_and_embeddings(model, sample.images, device=device)
    z, labels = z.numpy(), sample.labels.numpy()
    order = np.random.default_rng(config.seed).permutation(len(labels))
    fit, held = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
    for c in np.unique(labels):  # half of each class fits the probe, the other half is held out
        members = order[labels[order] == c]
        fit[members[: (len(members) + 1) // 2]] = True
        held[members[(len(members) + 1) // 2:]] = True
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(z[fit], labels[fit])
    kept = held & np.isin(labels, retained)
    retained_acc = 100.0 * float((probe.predict(z[kept]) == labels[kept]).mean()) if kept.any() else None
    for name, ids in groups.items():
        mask = held & np.isin(labels, ids)
        hits = (probe.predict(z[mask]) == labels[mask]).astype(float)
        test = _subset(dataset.test, ids, config.max_images, config.seed + 3)
        _, z_test = logits_and_embeddings(model, test.images, device=device)
        test_hits = (probe.predict(z_test.numpy()) == test.labels.numpy()).astype(float)
        out[name]["probe"] = {
            "accuracy": 100.0 * float(hits.mean()) if len(hits) else None,
            "accuracy_ci": _scaled(bootstrap_ci(lambda i, h=hits: h[i].mean(), len(hits), resamples=config.bootstrap,
                                                seed=config.seed)),
            "test_accuracy": 100.0 * float(test_hits.mean()) if len(test_hits) else None,
            "test_accuracy_ci": _scaled(bootstrap_ci(lambda i, h=test_hits: h[i].mean(), len(test_hits),
                                                     resamples=config.bootstrap, seed=config.seed)),
            "retained_accuracy": retained_acc, "n_fit": int(fit.sum()), "n_held_out": int(mask.sum()),
            "n_test": len(test_hits)}
    return out


def _faces(model: torch.nn.Module, dataset: Dataset, groups: dict[str, list[int]], retained: list[int],
           out: dict[str, dict[str, Any]], *, config: VerifyConfig, device: torch.device,
           original: torch.nn.Module | None) -> None:
    """TAR at FAR 1e-2 and 1e-3 per group and for the retained identities; similarity to original prototypes."""
    classes = [*retained, *(c for ids in groups.values() for c in ids)]
    pairs = _subset(dataset.test, classes, 2 * config.max_images, config.seed + 6)
    _, z = logits_and_embeddings(model, pairs.images, device=device)
    tars = tar_at_fars(z, pairs.labels, {"retained": retained, **groups}, fars=(0.01, 0.001))
    prototypes = None
    if original is not None:
        fit = _subset(dataset.train, classes, 100 * len(classes), config.seed + 7)
        _, z_orig = logits_and_embeddings(original, fit.images, device=device)
        prototypes = {c: F.normalize(z_orig[fit.labels == c].mean(0), dim=0) for c in classes
                      if (fit.labels == c).any()}
    z = F.normalize(z, dim=1)

    def similarity(ids: list[int]) -> tuple[float | None, list[float] | None]:
        if prototypes is None:
            return None, None
        mask = torch.isin(pairs.labels, torch.tensor(ids))
        sims = np.array([float(z[i] @ prototypes[int(pairs.labels[i])]) for i in torch.nonzero(mask).flatten()
                         if int(pairs.labels[i]) in prototypes])
        if not len(sims):
            return None, None
        return float(sims.mean()), bootstrap_ci(lambda i: sims[i].mean(), len(sims), resamples=config.bootstrap,
                                                seed=config.seed)

    retained_sim, _ = similarity(retained)
    for name, ids in groups.items():
        sim, sim_ci = similarity(ids)
        out[name]["faces"] = {"tar": tars[name], "tar_retained": tars["retained"], "prototype_similarity": sim,
                              "prototype_similarity_ci": sim_ci, "prototype_similarity_retained": retained_sim}


def _scaled(interval: list[float] | None) -> list[float] | None:
    return None if interval is None else [100.0 * v for v in interval]


def compare(figures: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a model next to the reference's (Retrain) and their differences. The prototype
    similarity is left out: a retrained model's embedding space is unrelated to the original's, so its similarity
    to the original prototypes is near 0 whatever it learned."""
    out = {}
    for name, group in figures.items():
        ref = reference.get(name, {})
        row = {}
        for key, path in HEADLINES.items():
            if key == "prototype_similarity":
                continue
            mine, theirs = _get(group, path), _get(ref, path)
            row[key] = {"method": mine, "reference": theirs,
                        "difference": None if mine is None or theirs is None else mine - theirs}
        out[name] = row
    return out


#: headline figure -> where it lives in a group's results
HEADLINES = {"mia_auc": ("mia", "auc"), "mia_member_share": ("mia", "member_share"),
             "probe_accuracy": ("probe", "accuracy"), "relearn_steps": ("relearn", "steps"),
             "tar_far_1e-2": ("faces", "tar", "far=0.01"), "prototype_similarity": ("faces", "prototype_similarity")}


def headlines(group: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one group's results (for tables), intervals included."""
    out = {key: _get(group, path) for key, path in HEADLINES.items()}
    out.update({"mia_auc_ci": _get(group, ("mia", "auc_ci")),
                "probe_accuracy_ci": _get(group, ("probe", "accuracy_ci")),
                "probe_test_accuracy": _get(group, ("probe", "test_accuracy")),
                "relearn_capped": _get(group, ("relearn", "capped")),
                "attack_auc_on_retained": _get(group, ("mia", "attack_auc_on_retained")),
                "tar_retained_far_1e-2": _get(group, ("faces", "tar_retained", "far=0.01")),
                "prototype_similarity_retained": _get(group, ("faces", "prototype_similarity_retained"))})
    return out


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    if path == ("relearn", "steps") and (tree.get("relearn") or {}).get("capped"):
        return tree["relearn"].get("max_steps")  # capped: at least this many (a lower bound)
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree
