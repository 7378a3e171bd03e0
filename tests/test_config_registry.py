"""Config validation and the strict registries."""

from __future__ import annotations

import pytest
import torch

from gslora.config import ModelConfig, SequenceConfig, TrainConfig, from_dict, load_yaml
from gslora.data import ImageSet, Request
from gslora.engine import ForgetConfig
from gslora.errors import GSLoRAError
from gslora.methods import METHODS, TaskContext
from gslora.models import build_model
from gslora.registry import Registry
from tests.conftest import tiny_model_config


def test_registry_is_strict_both_ways():
    registry: Registry = Registry("thing")
    registry.register("a")(object)
    with pytest.raises(GSLoRAError, match="thing 'a' is already registered"):
        registry.register("a")(object)
    with pytest.raises(GSLoRAError, match="unknown thing 'b'; choose one of: a"):
        registry.get("b")


def test_unknown_keys_and_bad_values_name_the_field(tmp_path):
    with pytest.raises(GSLoRAError, match="unknown key\\(s\\) train.epoch; valid keys"):
        from_dict(ForgetConfig, {"train": {"epoch": 3}})
    with pytest.raises(GSLoRAError, match="train.lr=-1.0: must be a positive number"):
        from_dict(TrainConfig, {"lr": -1}, "train")
    with pytest.raises(GSLoRAError, match="sequence.ratio=1.5"):
        SequenceConfig(ratio=1.5)
    with pytest.raises(GSLoRAError, match="model.width=30: must be divisible by heads=4"):
        ModelConfig(width=30, heads=4)
    with pytest.raises(GSLoRAError, match="unknown method 'gs_lore'"):
        from_dict(ForgetConfig, {"method": {"name": "gs_lore"}})
    with pytest.raises(GSLoRAError, match="method.beta"):
        from_dict(ForgetConfig, {"method": {"name": "gs_lora", "beta": [-1]}})
    (tmp_path / "c.yaml").write_text("train: [1, 2")
    with pytest.raises(GSLoRAError, match="is not valid YAML"):
        load_yaml(tmp_path / "c.yaml")
    assert from_dict(TrainConfig, {"lr": "1e-4"}).lr == 1e-4


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_takes_two_finite_steps_and_changes_only_its_parameters(name):
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = {n for n, _ in model.named_parameters() if n.startswith("net.head.")}
    method = METHODS.get(name)(METHODS.get(name).config_class())
    x = torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8)
    task = TaskContext(Request(0, (0,), (1, 2), ()), epochs=2, steps_per_epoch=2,
                       forget_data=ImageSet(x[:3], torch.zeros(3, dtype=torch.long)),
                       retain_data=ImageSet(x[3:], torch.tensor([1, 2, 1])), original_model=lambda: model)
    method.setup_task(model, task)
    params = method.trainable_parameters()
    snapshot = {n: p.detach().clone() for n, p in method.model.named_parameters()}
    if method.training_free:
        assert params == []
    else:
        opt = torch.optim.AdamW(params, lr=1e-2)
        for epoch in range(2):
            terms = method.training_step((x[:3], torch.zeros(3, dtype=torch.long)), (x[3:], torch.tensor([1, 2, 1])),
                                         epoch=epoch)
            assert "loss" in terms and all(torch.isfinite(v) for v in terms.values())
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            method.after_step()
        trainable_ids = {id(p) for p in params}
        for n, p in method.model.named_parameters():
            if id(p) not in trainable_ids:
                assert torch.equal(p, snapshot[n]), f"{name} changed frozen parameter {n}"
        assert any(not torch.equal(p, snapshot[n]) for n, p in method.model.named_parameters()
                   if id(p) in trainable_ids)
    for n, p in model.named_parameters():  # the caller's model is untouched
        assert torch.equal(p, before[n])
    edited = method.end_task(task)
    assert isinstance(edited, torch.nn.Module) and not any("lora" in n for n, _ in edited.named_parameters())
    changed = {n for n, p in edited.named_parameters() if not torch.equal(p, before[n])}
    if name != "retrain":  # every other method keeps the head, as the reference's baselines do
        assert changed and not changed & head, f"{name} changed {sorted(changed & head)}"
    diagnostics = method.diagnostics()
    assert 0 < diagnostics["trainable_ratio"] <= 1


def test_yaml_scalars_are_coerced_per_field():
    config = from_dict(ForgetConfig, {"method": {"name": "gs_lora", "beta": ["2e-1", 0.25], "bnd": 10}})
    assert config.method["beta"] == ["2e-1", 0.25]  # the method's own config coerces on use
    from gslora.methods import GSLoRAConfig

    assert from_dict(GSLoRAConfig, {"beta": ["2e-1", 1]}).beta == [0.2, 1.0]
    assert from_dict(GSLoRAConfig, {"beta": "0.3"}).beta == 0.3
    with pytest.raises(GSLoRAError, match="train.epochs=True: must be a number"):
        from_dict(TrainConfig, {"epochs": True}, "train")
    with pytest.raises(GSLoRAError, match="train.min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(GSLoRAError, match="sequence.requests\\[0\\]"):
        SequenceConfig(requests=[[1.5]])


def test_min_steps_raises_the_epochs_of_a_small_request_and_the_loop_takes_them():
    from gslora.engine.loop import optimise

    config = TrainConfig(epochs=2, min_steps=10, batch_size=4, lr=1e-2, device="cpu")
    assert config.for_steps_per_epoch(3).epochs == 4  # ceil(10 / 3)
    assert config.for_steps_per_epoch(8).epochs == 2  # already 16 steps
    assert TrainConfig(epochs=2, min_steps=0).for_steps_per_epoch(1).epochs == 2  # min_steps 0: off
    with pytest.raises(GSLoRAError, match="train.min_steps=-1"):
        TrainConfig(min_steps=-1)

    class Counting:
        model = torch.nn.Linear(2, 1)
        steps = 0

        def trainable_parameters(self):
            return list(self.model.parameters())

        def training_step(self, forget, retain, *, epoch):
            self.steps += 1
            return {"loss": self.model(torch.ones(1, 2)).sum()}

        def after_step(self):
            pass

    method = Counting()
    history = optimise(method, config, steps_per_epoch=3, epoch_batches=lambda: iter([(None, None)] * 3), desc="t")
    assert method.steps == 12 and len(history) == 4
