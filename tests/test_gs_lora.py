"""GS-LoRA's loss terms: alpha warm-up and per-request beta."""

from __future__ import annotations

import pytest
import torch

from gslora.adapters import find_ffn_groups
from gslora.data import Request
from gslora.methods import GSLoRA, GSLoRAConfig, TaskContext
from gslora.models import build_model
from tests.conftest import tiny_model_config


def _step(config: GSLoRAConfig, epoch: int, request_index: int = 0) -> tuple[dict, GSLoRA]:
    torch.manual_seed(0)
    method = GSLoRA(config)
    method.setup_task(build_model(tiny_model_config()), TaskContext(Request(request_index, (0,), (1,), ()), 3, 1))
    with torch.no_grad():  # a non-zero adapter, so the group lasso is not just A's norm
        for name, p in method.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    x = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8)
    terms = method.training_step((x[:2], torch.tensor([0, 0])), (x[2:], torch.tensor([1, 1])), epoch=epoch)
    return terms, method


def test_loss_is_the_sum_of_the_papers_terms_with_alpha_warmup():
    config = GSLoRAConfig(alpha=0.01, alpha_warmup_epochs=2, beta=0.3, bnd=50.0)
    warm, _ = _step(config, epoch=1)
    assert warm["loss"].item() == pytest.approx((warm["retain"] + 0.3 * warm["forget"]).item(), rel=1e-6)
    assert warm["forget"].item() == pytest.approx(50.0 - warm["forget_ce"].item(), rel=1e-6)
    after, _ = _step(config, epoch=2)
    expected = after["retain"] + 0.3 * after["forget"] + 0.01 * after["group_lasso"]
    assert after["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert after["group_lasso"].item() > 0


def test_beta_per_request_repeats_the_last_value():
    config = GSLoRAConfig(beta=[0.2, 0.25, 0.3])
    assert [config.beta_for(i) for i in range(5)] == [0.2, 0.25, 0.3, 0.3, 0.3]
    _, method = _step(config, epoch=0, request_index=1)
    assert method.beta == 0.25


def test_trainable_parameters_are_exactly_the_lora_tensors():
    _, method = _step(GSLoRAConfig(rank=8), epoch=0)
    names = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    # 2 blocks x 2 layers x (8 * 32 + 128 * 8) for fc1 and (8 * 128 + 32 * 8) for fc2
    assert sum(p.numel() for p in method.trainable_parameters()) == 2 * (8 * 32 + 128 * 8 + 8 * 128 + 32 * 8)


def test_mask_missing_keeps_classes_without_data_out_of_the_retain_softmax():
    config = GSLoRAConfig(mask_missing=True, beta=0.0, alpha=0.0)
    torch.manual_seed(0)
    method = GSLoRA(config)
    method.setup_task(build_model(tiny_model_config()), TaskContext(Request(0, (0,), (1, 2, 3), (), (3,)), 1, 1))
    logits = torch.randn(4, 10)
    y_r, y_f = torch.tensor([1, 2]), torch.tensor([0, 0])
    terms = method.loss_terms(logits, torch.zeros(4, 32), y_r, y_f, epoch=0)
    kept = [c for c in range(10) if c != 3]
    expected = torch.nn.functional.cross_entropy(logits[:2, kept], torch.tensor([1, 2]))  # 1, 2 stay at 1, 2
    assert terms["retain"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_request_changes_only_the_lora_tensors_and_the_adapter_reproduces_the_merged_model(tmp_path):
    """A conv stem has BatchNorm: its running statistics must not drift during a request (they would survive the
    merge), so every tensor outside the adapted FFN weights is bit-identical and base + adapter == merged model."""
    from peft import PeftModel

    from gslora.config import DataConfig, ModelConfig, SequenceConfig, TrainConfig
    from gslora.engine import ForgetConfig, run_forgetting
    from gslora.models import load_checkpoint, save_checkpoint
    from tests.conftest import make_npz

    data = make_npz(tmp_path / "d.npz", per_class_train=[12] * 4, per_class_test=4, size=16)
    config = ModelConfig(depth=2, width=32, heads=2, patch_size=4, image_size=16, in_chans=1, num_classes=4,
                         stem="conv")
    torch.manual_seed(0)
    base = build_model(config)
    save_checkpoint(base, tmp_path / "base", classes=[f"class_{i}" for i in range(4)])
    base, _ = load_checkpoint(tmp_path / "base")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in base.modules())
    forget = ForgetConfig(checkpoint=str(tmp_path / "base"), data=DataConfig(dataset=str(data)),
                          sequence=SequenceConfig(requests=[["class_0"]], ratio=1.0),
                          method={"name": "gs_lora", "bnd": 5.0, "lora_alpha": 8.0},
                          train=TrainConfig(epochs=2, batch_size=8, lr=1e-2, device="cpu"))
    request = run_forgetting(forget, tmp_path / "run")["requests"][0]
    merged, _ = load_checkpoint(tmp_path / "run" / request["checkpoint"])
    adapted = {f"{t}.weight" for g in find_ffn_groups(base) for t in g.targets}
    before, after = base.state_dict(), merged.state_dict()
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= adapted, sorted(changed - adapted)
    with_adapter = PeftModel.from_pretrained(base, str(tmp_path / "run" / request["adapter"])).eval()
    x = torch.randint(0, 255, (32, 1, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        expected, got = with_adapter(x), merged.eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def tiny_request(**model_kw):
    """A tiny model (``model_kw`` for its config), 6 images (2 of the forgotten class 0, then 4 retained of classes
    1-2) and their request."""
    from gslora.data import ImageSet

    torch.manual_seed(0)
    model = build_model(tiny_model_config(**model_kw))
    x = torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 2, 1, 2])
    task = TaskContext(Request(0, (0,), (1, 2), ()), 3, 1, forget_data=ImageSet(x[:2], y[:2]),
                       retain_data=ImageSet(x[2:], y[2:]))
    return model, x, y, task


def test_distillation_pulls_toward_the_model_the_request_started_from():
    """method.distill: the teacher is the request's starting model (LoRA switched off), so the term is 0 while the
    adapter is still zero, positive once it is not, and the teacher's logits are the untouched model's."""
    model, x, y, task = tiny_request()
    method = GSLoRA(GSLoRAConfig(distill=2.0, bnd="auto"))
    method.setup_task(model, task)
    step = lambda: method.training_step((x[:2], y[:2]), (x[2:], y[2:]), epoch=0)  # noqa: E731
    assert step()["distill"].item() == pytest.approx(0.0, abs=1e-6)  # B = 0: student == teacher
    with torch.no_grad():
        for name, p in method.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    terms = step()
    assert terms["distill"].item() > 1e-4
    with torch.no_grad(), method.peft_model.disable_adapter():
        teacher = method.classifier.classify(method.classifier.embed(x[2:]))
    torch.testing.assert_close(teacher, model.classify(model.embed(x[2:])))
    # bnd=auto: the starting model's mean cross-entropy of a wrong class on the retained images
    with torch.no_grad():
        model.eval()
        logits = model.classify(model.embed(x[2:]))
    ce = torch.logsumexp(logits, 1, keepdim=True) - logits
    wrong = torch.ones_like(ce, dtype=torch.bool).scatter_(1, y[2:, None], False)
    assert method.bnd == pytest.approx(ce[wrong].mean().item(), rel=1e-5) and method.bnd > 0
    method.end_task(task)
    assert method.diagnostics()["bnd"] == method.bnd


def test_distillation_teacher_answers_as_the_starting_model_in_eval_mode(monkeypatch):
    """The teacher of method.distill is the starting model as it answered before the request: eval mode, so no drop
    path or dropout while the student trains with them; every module's own mode comes back after the step."""
    import gslora.methods.gs_lora as gs_lora_module
    from gslora.engine.loop import train_mode

    model, x, y, task = tiny_request(drop_path=0.5)
    with torch.no_grad():
        model.eval()
        expected = model.classify(model.embed(x[2:]))
        model.train()
        assert not torch.allclose(model.classify(model.embed(x[2:])), expected)  # drop path acts in train mode
    method = GSLoRA(GSLoRAConfig(distill=1.0))
    method.setup_task(model, task)
    seen = []
    monkeypatch.setattr(gs_lora_module, "kd_loss", lambda s, t, temperature: seen.append(t) or (s - t).pow(2).mean())
    train_mode(method.model)
    modes = {name: m.training for name, m in method.model.named_modules()}
    for _ in range(3):
        method.training_step((x[:2], y[:2]), (x[2:], y[2:]), epoch=0)
    assert len(seen) == 3
    for teacher in seen:
        torch.testing.assert_close(teacher, expected)
    assert {name: m.training for name, m in method.model.named_modules()} == modes


def test_evaluating_puts_every_module_in_eval_mode_and_restores_each_ones_own_mode():
    """A request's model trains with its frozen BatchNorm in eval mode; a block that evaluates it mid-request must
    leave that BatchNorm in eval mode afterwards (``model.train(True)`` would not), also when the block raises."""
    from gslora.models import evaluating

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("stop")
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_embedding_distillation_measures_drift_from_the_starting_model_and_enters_the_loss():
    """method.distill_embedding: 1 - cos(embedding, starting model's embedding) on the retained batch, 0 while the
    adapter is zero, the untouched model's embedding as the teacher, added to the loss at its weight, and its
    gradient moves the adapter back toward the starting model."""
    from gslora.errors import GSLoRAError

    model, x, y, task = tiny_request()
    weighted, plain = GSLoRA(GSLoRAConfig(distill_embedding=3.0)), GSLoRA(GSLoRAConfig())
    for method in (weighted, plain):
        method.setup_task(model, task)
    step = lambda m: m.training_step((x[:2], y[:2]), (x[2:], y[2:]), epoch=0)  # noqa: E731
    assert step(weighted)["distill_embedding"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        lora = dict(plain.model.named_parameters())
        for name, p in weighted.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
            if "lora_" in name:
                lora[name].copy_(p)  # the same adapter in both
    terms, reference = step(weighted), step(plain)
    with torch.no_grad():
        model.eval()
        teacher = model.embed(x[2:])
        weighted.model.eval()
        student = weighted.classifier.embed(x[2:])
    weighted.model.train()
    expected = (1 - torch.nn.functional.cosine_similarity(student, teacher, dim=1)).mean()
    assert expected.item() > 1e-4
    torch.testing.assert_close(terms["distill_embedding"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["loss"] - reference["loss"], 3.0 * expected, atol=1e-5, rtol=1e-4)
    adapter = [p for n, p in weighted.model.named_parameters() if "lora_" in n]
    optimizer = torch.optim.SGD(adapter, lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        step(weighted)["distill_embedding"].backward()
        optimizer.step()
    assert step(weighted)["distill_embedding"].item() < 0.5 * terms["distill_embedding"].item()
    with pytest.raises(GSLoRAError, match="distill_embedding"):
        GSLoRAConfig(distill_embedding=-1.0)


def test_stop_when_forgotten_ends_the_request_at_the_first_epoch_that_meets_it(base_checkpoint, fashion_subset,
                                                                                 tmp_path):
    """With train.stop_when_forgotten the request ends after the first epoch at which the forget training images'
    top-1 accuracy is at or below the bound: fewer epochs than configured, and the merged model meets the bound."""
    from gslora.config import DataConfig, ForgetTrainConfig, SequenceConfig
    from gslora.engine import ForgetConfig, predict, run_forgetting
    from gslora.models import load_checkpoint

    path, subset = fashion_subset
    epochs = 30
    forget = ForgetConfig(checkpoint=str(base_checkpoint), data=DataConfig(dataset=str(path)),
                          sequence=SequenceConfig(requests=[["Trouser"]], ratio=1.0),
                          method={"name": "gs_lora", "bnd": 10.0},
                          train=ForgetTrainConfig(epochs=epochs, min_steps=0, batch_size=64, lr=1e-2, device="cpu",
                                                  stop_when_forgotten=1.0))
    request = run_forgetting(forget, tmp_path / "run")["requests"][0]
    assert 1 <= len(request["history"]) < epochs
    merged, _ = load_checkpoint(tmp_path / "run" / request["checkpoint"])
    trouser = subset.classes.index("Trouser")
    images = subset.train.subset(torch.nonzero(subset.train.labels == trouser).flatten())
    top1 = predict(merged, images, device=torch.device("cpu")).top1
    assert 100.0 * (top1 == trouser).float().mean().item() <= 1.0


def test_stop_when_forgotten_is_a_percentage_of_forgetting_requests_only():
    from gslora.config import ForgetTrainConfig, PretrainConfig, from_dict
    from gslora.detection.engine import DetectionForgetConfig, DetectionPretrainConfig
    from gslora.errors import GSLoRAError

    with pytest.raises(GSLoRAError, match="train.stop_when_forgotten=101"):
        ForgetTrainConfig(stop_when_forgotten=101)
    for config in (PretrainConfig, DetectionPretrainConfig):  # it reads the forget score of a forgetting request
        with pytest.raises(GSLoRAError, match="stop_when_forgotten"):
            from_dict(config, {"train": {"stop_when_forgotten": 0}})
    # a detection request reads its forget classes' mAP@0.5 (tests/test_detection.py runs it)
    assert from_dict(DetectionForgetConfig, {"train": {"stop_when_forgotten": 2}}).train.stop_when_forgotten == 2


def test_bnd_scale_multiplies_the_auto_bound_and_refuses_a_written_bound():
    from gslora.errors import GSLoRAError

    model, x, y, task = tiny_request()
    plain, scaled = GSLoRA(GSLoRAConfig(bnd="auto")), GSLoRA(GSLoRAConfig(bnd="auto", bnd_scale=2.0))
    plain.setup_task(model, task)
    scaled.setup_task(model, task)
    assert scaled.bnd == pytest.approx(2 * plain.bnd, rel=1e-6) and plain.bnd > 0
    with pytest.raises(GSLoRAError, match="bnd_scale"):
        GSLoRAConfig(bnd=10.0, bnd_scale=2.0)
    with pytest.raises(GSLoRAError, match="bnd_scale"):
        GSLoRAConfig(bnd="auto", bnd_scale=0)


def test_bnd_per_image_keeps_pushing_an_image_the_batch_mean_lets_go():
    """Two forget images, one far past the bound and one still recognised: the batch-mean bound (the reference) gives
    no loss and no gradient, the per-image bound pushes the recognised one only."""
    y = torch.tensor([0, 0])
    logits = torch.tensor([[-30.0, 0.0], [2.0, 0.0]], requires_grad=True)  # CE 30.0 and about 0.13: mean above 5
    batch, each = GSLoRA(GSLoRAConfig(bnd=5.0)), GSLoRA(GSLoRAConfig(bnd=5.0, bnd_per_image=True))
    for method in (batch, each):
        method.bnd = 5.0
    ce, loss = batch.bounded(logits, y)
    assert loss.item() == 0.0 and ce.item() > 5.0
    ce_each, loss_each = each.bounded(logits, y)
    assert ce_each.item() == pytest.approx(ce.item())
    assert loss_each.item() == pytest.approx((5.0 - 0.1269) / 2, abs=1e-3)
    (grad,) = torch.autograd.grad(loss_each, logits)
    assert grad[0].abs().sum().item() == 0.0 and grad[1].abs().sum().item() > 0
