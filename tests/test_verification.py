"""Each verification figure on cases whose answer is known: a model that memorised a class shows it (high membership
AUC, a probe that still separates the class, no steps to relearn it), a model that never saw the class does not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gslora.config import DataConfig, ModelConfig, TrainConfig
from gslora.data import Dataset, load_dataset
from gslora.engine import pretrain
from gslora.verification import VerifyConfig, compare, verify
from tests.conftest import make_npz

FORGOTTEN = 4
RETAINED = [0, 1, 2, 3]


def _without(dataset: Dataset, classes: list[int]) -> Dataset:
    keep = ~torch.isin(dataset.train.labels, torch.tensor(classes))
    return dataclasses.replace(dataset, train=dataset.train.subset(torch.nonzero(keep).flatten()))


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """Random-pixel images (nothing to generalise, everything to memorise): one model trained on all 5 classes until
    it memorises them, one trained the same way without class 4."""
    path = make_npz(tmp_path_factory.mktemp("noise") / "noise.npz", per_class_train=[40] * 5, per_class_test=40,
                    size=8, seed=3)
    dataset = load_dataset(DataConfig(dataset=str(path)))
    config = ModelConfig(depth=2, width=48, heads=2, patch_size=2, image_size=8, in_chans=1, num_classes=5)
    train = TrainConfig(epochs=80, batch_size=40, lr=3e-3, warmup_epochs=0, weight_decay=0.0, device="cpu")
    seen, _ = pretrain(config, dataset, train)
    unseen, _ = pretrain(config, _without(dataset, [FORGOTTEN]), train)
    return dataset, seen, unseen


FAST = VerifyConfig(relearn=False, bootstrap=100, max_images=200)


def test_membership_inference_finds_memorised_training_images_and_not_unseen_ones(memorised):
    dataset, seen, unseen = memorised
    groups = {"forgotten": [FORGOTTEN]}
    on_seen = verify(seen, dataset, groups, RETAINED, config=FAST, device=torch.device("cpu"))["forgotten"]["mia"]
    on_unseen = verify(unseen, dataset, groups, RETAINED, config=FAST, device=torch.device("cpu"))["forgotten"]["mia"]
    assert on_seen["attack_auc_on_retained"] > 0.8  # the attack works: members and non-members differ
    assert on_seen["auc"] > 0.9 and on_seen["member_share"] > 0.7, on_seen
    assert abs(on_unseen["auc"] - 0.5) < 0.15 and on_unseen["member_share"] < 0.3, on_unseen
    low, high = on_unseen["auc_ci"]
    assert low <= on_unseen["auc"] <= high and high - low < 0.4


def test_linear_probe_still_separates_what_was_learned_and_not_what_was_never_seen(memorised):
    dataset, seen, unseen = memorised
    groups = {"forgotten": [FORGOTTEN]}
    config = dataclasses.replace(FAST, membership=False)
    on_seen = verify(seen, dataset, groups, RETAINED, config=config, device=torch.device("cpu"))["forgotten"]["probe"]
    on_unseen = verify(unseen, dataset, groups, RETAINED, config=config,
                       device=torch.device("cpu"))["forgotten"]["probe"]
    assert on_seen["accuracy"] > 70, on_seen  # chance is 20%
    assert on_unseen["accuracy"] < 45, on_unseen
    assert on_seen["accuracy_ci"][0] > on_unseen["accuracy_ci"][1]


def test_relearning_takes_no_step_for_a_class_that_is_known_and_steps_for_one_never_seen(fashion):
    g = torch.Generator().manual_seed(0)
    subset = Dataset("fashion_small", fashion.train.subset(torch.randperm(60000, generator=g)[:3000]),
                     fashion.test.subset(torch.randperm(10000, generator=g)[:1000]), fashion.classes)
    config = ModelConfig(depth=1, width=32, heads=2, patch_size=7, image_size=28, in_chans=1, num_classes=10)
    train = TrainConfig(epochs=3, batch_size=64, lr=3e-3, warmup_epochs=0, device="cpu")
    bag = 8
    seen, _ = pretrain(config, subset, train)
    unseen, _ = pretrain(config, _without(subset, [bag]), train)
    relearn = dataclasses.replace(FAST, membership=False, probe=False, relearn=True, relearn_max_steps=60,
                                  relearn_eval_every=5, relearn_lr=1e-3)
    groups, retained = {"Bag": [bag]}, [c for c in range(10) if c != bag]
    known = verify(seen, subset, groups, retained, config=relearn, device=torch.device("cpu"),
                   acc_before={"Bag": 80.0})["Bag"]["relearn"]
    never = verify(unseen, subset, groups, retained, config=relearn, device=torch.device("cpu"),
                   acc_before={"Bag": 80.0})["Bag"]["relearn"]
    assert known["steps"] == 0, known
    assert never["curve"][0][1] == 0.0  # the head never predicts a class it was not trained on
    assert never["steps"] is not None and never["steps"] >= 5, never  # fine-tuning does teach it, in some steps
    assert never["curve"][-1][1] >= 40.0 > never["curve"][-2][1]  # and stops when the target is first reached


def test_face_figures_compare_embeddings_with_the_original_models_prototypes(memorised):
    dataset, _, _ = memorised
    config = ModelConfig(depth=1, width=32, heads=2, patch_size=2, image_size=8, in_chans=1, num_classes=5,
                         head="cosface")
    face, _ = pretrain(config, dataset, TrainConfig(epochs=20, batch_size=40, lr=3e-3, warmup_epochs=0,
                                                    device="cpu"))
    torch.manual_seed(1)
    from gslora.models import build_model

    stranger = build_model(config)
    only = dataclasses.replace(FAST, membership=False, probe=False)
    groups = {"forgotten": [FORGOTTEN]}
    same = verify(face, dataset, groups, RETAINED, config=only, device=torch.device("cpu"),
                  original=face)["forgotten"]["faces"]
    other = verify(stranger, dataset, groups, RETAINED, config=only, device=torch.device("cpu"),
                   original=face)["forgotten"]["faces"]
    assert set(same["tar"]) == {"far=0.01", "far=0.001"} and same["tar_retained"] is not None
    assert same["prototype_similarity"] > 0.5 and same["prototype_similarity_retained"] > 0.5, same
    assert abs(other["prototype_similarity"]) < same["prototype_similarity"] - 0.3, other


def test_compare_reports_each_headline_against_the_reference():
    figures = {"g": {"mia": {"auc": 0.8}, "probe": {"accuracy": 90.0}, "relearn": {"steps": 0}}}
    reference = {"g": {"mia": {"auc": 0.5}, "probe": {"accuracy": 60.0}, "relearn": {"steps": 40}}}
    rows = compare(figures, reference)["g"]
    assert rows["mia_auc"]["difference"] == pytest.approx(0.3)
    assert rows["probe_accuracy"] == {"method": 90.0, "reference": 60.0, "difference": 30.0}
    assert rows["relearn_steps"]["difference"] == -40
    assert rows["tar_far_1e-2"] == {"method": None, "reference": None, "difference": None}


def test_the_bootstrap_auc_interval_is_roc_auc_score_on_each_resample():
    """The vectorised AUC of every resample at once gives the interval of one sklearn ``roc_auc_score`` per resample,
    ties (equal scores of a member and a non-member count one half) and tiny samples included."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from gslora.verification.stats import paired_bootstrap_auc_ci

    rng = np.random.default_rng(0)
    for n_a, n_b, decimals in ((40, 60, 8), (200, 150, 1), (3, 2, 1), (1, 1, 0)):
        positive, negative = rng.random(n_a).round(decimals), (rng.random(n_b) * 0.8).round(decimals)
        draws, aucs = np.random.default_rng(5), []  # the draws: members then non-members, resample by resample
        for _ in range(50):
            i, j = draws.integers(0, n_a, n_a), draws.integers(0, n_b, n_b)
            labels = np.concatenate([np.ones(n_a), np.zeros(n_b)])
            aucs.append(roc_auc_score(labels, np.concatenate([positive[i], negative[j]])))
        expected = [np.percentile(aucs, 2.5), np.percentile(aucs, 97.5)]
        assert paired_bootstrap_auc_ci(positive, negative, resamples=50, seed=5) == pytest.approx(expected, abs=1e-12)
    assert paired_bootstrap_auc_ci(positive, negative, resamples=0, seed=5) is None
