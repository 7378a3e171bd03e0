"""Each baseline's distinctive term on a hand-made case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gslora.config import TrainConfig
from gslora.data import ImageSet, Request
from gslora.engine.loop import train_request
from gslora.methods import METHODS, TaskContext, kd_loss
from gslora.methods.anchored import anchored_penalty, estimate_importance
from gslora.methods.lirf import attention_distance
from gslora.methods.ssd import dampen
from gslora.models import build_model
from tests.conftest import tiny_model_config

X = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
FORGET = (X[:4], torch.tensor([0, 0, 3, 3]))
RETAIN = (X[4:], torch.tensor([1, 2, 1, 2]))


def _setup(name: str, epochs: int = 2, **config):
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    cls = METHODS.get(name)
    method = cls(cls.config_class(**config))
    task = TaskContext(Request(0, (0, 3), (1, 2, 4), (), (4,)), epochs=epochs, steps_per_epoch=1,
                       forget_data=ImageSet(*FORGET), retain_data=ImageSet(*RETAIN), original_model=lambda: model)
    method.setup_task(model, task)
    return method, model, task


def _perturb(method) -> None:
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_forget_labels_are_redrawn_among_retained_classes_with_data():
    method, _, _ = _setup("random_label")
    labels = torch.cat([method.random_retained_labels(torch.zeros(50, dtype=torch.long)) for _ in range(4)])
    assert set(labels.tolist()) == {1, 2}  # class 4 is retained but has no data (missing)
    assert not torch.equal(labels[:50], labels[50:100])  # redrawn on every call


def test_kd_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(5, 10)
    assert kd_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.flip(1), 2.0).item() > 0.01


def test_lwf_distillation_is_real_zero_at_the_start_then_positive():
    method, _, _ = _setup("lwf")
    method.model.eval()
    assert method.training_step(FORGET, RETAIN, epoch=0)["distill"].item() == pytest.approx(0.0, abs=1e-6)
    _perturb(method)
    terms = method.training_step(FORGET, RETAIN, epoch=0)
    assert terms["distill"].item() > 1e-4 and torch.isfinite(terms["distill"])


@pytest.mark.parametrize("importance", ["ones", "fisher", "mas"])
def test_anchored_penalty_is_zero_at_the_anchor_and_weighted_by_importance(importance):
    method, _, _ = _setup("anchored", importance=importance, penalty=1.0)
    assert method.training_step(FORGET, RETAIN, epoch=0)["penalty"].item() == 0.0
    if importance == "ones":
        assert method.importance is None
    else:
        assert all((i >= 0).all() for i in method.importance.values())
        assert sum(i.sum() for i in method.importance.values()) > 0
    _perturb(method)
    penalty = method.training_step(FORGET, RETAIN, epoch=0)["penalty"]
    importance_map = method.importance
    expected = sum((((p - method.anchor[n]) ** 2) * (importance_map[n] if importance_map else 1)).sum()
                   for n, p in method.named.items())
    assert penalty.item() == pytest.approx(float(expected.detach()), rel=1e-5) and penalty.item() > 0


def test_fisher_importance_is_the_mean_squared_gradient_for_single_sample_batches():
    model = build_model(tiny_model_config()).eval()
    data = ImageSet(*RETAIN)
    importance = estimate_importance(model, data, "fisher", batch_size=1, device=torch.device("cpu"))
    weight = model.net.blocks[0].mlp.fc1.weight
    expected = torch.zeros_like(weight)
    for i in range(len(data)):
        grad, = torch.autograd.grad(F.cross_entropy(model(data.images[i:i + 1]), data.labels[i:i + 1]), weight)
        expected += grad ** 2 / len(data)
    assert torch.allclose(importance["net.blocks.0.mlp.fc1.weight"], expected, rtol=1e-4, atol=1e-12)


def test_ewc_mas_and_l2_are_presets_of_the_anchored_penalty():
    assert (METHODS.get("ewc").config_class().importance, METHODS.get("ewc").config_class().penalty) == ("fisher", 10)
    assert METHODS.get("mas").config_class().importance == "mas"
    assert METHODS.get("l2").config_class().importance == "ones"
    named = {"w": torch.nn.Parameter(torch.tensor([1.0, 2.0]))}
    assert anchored_penalty(named, {"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([2.0, 0.5])}).item() == 4.0


@pytest.mark.parametrize("name, term", [("der", "logit_match"), ("fdr", "function_distance")])
def test_function_space_terms_are_zero_at_the_start(name, term):
    method, _, _ = _setup(name)
    method.model.eval()
    assert method.training_step(FORGET, RETAIN, epoch=0)[term].item() == pytest.approx(0.0, abs=1e-6)
    _perturb(method)
    assert method.training_step(FORGET, RETAIN, epoch=0)[term].item() > 1e-4


def test_der_pp_adds_a_second_retained_batch_der_does_not():
    assert "replay" not in _setup("der")[0].training_step(FORGET, RETAIN, epoch=0)
    method, _, _ = _setup("der_pp")
    terms = method.training_step(FORGET, RETAIN, epoch=0)
    assert terms["replay"].item() > 0
    expected = terms["forget_relabelled"] + 0.5 * terms["logit_match"] + 0.5 * terms["replay"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_scrub_maximises_forget_divergence_only_in_the_max_epochs():
    method, _, _ = _setup("scrub", epochs=4, max_fraction=0.5)
    _perturb(method)
    early, late = method.training_step(FORGET, RETAIN, epoch=1), method.training_step(FORGET, RETAIN, epoch=2)
    assert "forget_kl" in early and "forget_kl" not in late
    assert early["forget_kl"].item() > 0
    expected = 0.99 * early["retain"] + 0.001 * early["retain_kl"] - early["forget_kl"]
    assert early["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_scrub_s_smoothing_tracks_a_running_average_updated_per_epoch():
    method, _, _ = _setup("scrub_s")
    assert method.training_step(FORGET, RETAIN, epoch=0)["smoothing"].item() == 0.0
    _perturb(method)
    moved = method.training_step(FORGET, RETAIN, epoch=0)["smoothing"].item()
    assert moved > 0
    after_update = method.training_step(FORGET, RETAIN, epoch=1)["smoothing"].item()  # average moved 10% closer
    assert after_update == pytest.approx(0.9 * moved, rel=1e-4)


def test_neggrad_plus_ascends_the_forget_loss():
    method, _, _ = _setup("neggrad_plus", retain_weight=0.8)
    terms = method.training_step(FORGET, RETAIN, epoch=0)
    assert terms["loss"].item() == pytest.approx((0.8 * terms["retain"] - 0.2 * terms["forget_ce"]).item(), rel=1e-5)
    ga, _, _ = _setup("gradient_ascent")
    terms = ga.training_step(FORGET, RETAIN, epoch=0)
    assert terms["loss"].item() == pytest.approx(-terms["forget_ce"].item(), rel=1e-5)


def test_salun_changes_only_the_salient_share_of_weights_even_with_weight_decay():
    method, _, task = _setup("salun", sparsity=0.3)
    total = sum(p.numel() for p in method.trainable_parameters())
    assert method.trainable == pytest.approx(0.3 * total, rel=0.01)
    start = {n: p.detach().clone() for n, p in method.named.items()}
    train_request(method, task, ImageSet(*FORGET), ImageSet(*RETAIN),
                  TrainConfig(epochs=2, batch_size=4, lr=1e-2, weight_decay=0.5, device="cpu"),
                  device=torch.device("cpu"))
    changed = masked = 0
    for n, p in method.named.items():
        moved = p != start[n]
        assert not (moved & ~method.masks[n]).any(), f"{n} changed outside the saliency mask"
        changed += int(moved.sum())
        masked += int(method.masks[n].sum())
    assert changed > 0.5 * masked


def test_ssd_dampens_only_weights_more_important_to_the_forget_data():
    params = {"w": torch.nn.Parameter(torch.ones(4))}
    i_f = {"w": torch.tensor([1.0, 50.0, 200.0, 0.0])}
    i_d = {"w": torch.tensor([1.0, 10.0, 10.0, 1.0])}
    assert dampen(params, i_f, i_d, selection=10.0, dampening=1.0) == 1  # only 200 > 10 * 10
    assert torch.allclose(params["w"].detach(), torch.tensor([1.0, 1.0, 0.05, 1.0]))


def test_ssd_is_training_free_and_the_engine_takes_no_step():
    method, model, task = _setup("ssd", selection=1.0)
    history = train_request(method, task, ImageSet(*FORGET), ImageSet(*RETAIN), TrainConfig(device="cpu"),
                            device=torch.device("cpu"))
    assert history == []
    edited = method.end_task(task)
    assert method.selected > 0
    assert any(not torch.equal(a, b) for a, b in zip(edited.parameters(), model.parameters()))


def test_retrain_starts_from_fresh_weights_and_trains_the_head():
    method, model, _ = _setup("retrain")
    fresh = dict(method.model.named_parameters())
    assert not torch.equal(fresh["net.blocks.0.mlp.fc1.weight"], dict(model.named_parameters())[
        "net.blocks.0.mlp.fc1.weight"])
    assert all(p.requires_grad for p in method.model.parameters())
    assert method.diagnostics()["trainable_ratio"] == 1.0
    terms = method.training_step(FORGET, RETAIN, epoch=0)
    assert set(terms) == {"loss", "retain"}


def test_lirf_trains_the_lower_half_and_matches_attention_maps():
    method, _, _ = _setup("lirf")
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert "net.blocks.0.mlp.fc1.weight" in trainable and "net.patch_embed.proj.weight" in trainable
    assert not any(n.startswith(("net.blocks.1.", "net.norm", "net.head")) for n in trainable)
    assert 0.2 < method.diagnostics()["trainable_ratio"] < 0.8
    tokens = torch.randn(3, 17, 32)
    assert attention_distance(tokens, tokens).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_distance(tokens, tokens.flip(1)).item() > 0
    method.model.eval()
    terms = method.training_step(FORGET, RETAIN, epoch=0)
    assert terms["attention_retain"].item() == pytest.approx(0.0, abs=1e-5)
