"""Training precision, activation checkpointing and the per-phase profile of a request: bf16 autocast and
checkpointing change how a step is computed, not what a request achieves or which tensors it may change."""

from __future__ import annotations

import json

import pytest
import torch

from gslora.cli import main
from gslora.config import TrainConfig
from gslora.engine.loop import enable_checkpointing, grad_scaler
from gslora.errors import GSLoRAError
from gslora.models import build_model, load_checkpoint
from tests.conftest import tiny_model_config

FORGET = ["--bnd", "10", "--beta", "0.2", "--lr", "0.01", "--epochs", "3", "--ratio", "0.2", "--device", "cpu", "-q"]


def _bf16_request(base_checkpoint, data, run, *extra: str) -> dict:
    assert main(["forget", "--checkpoint", str(base_checkpoint), "--data", str(data), "--classes", "Bag,Sneaker",
                 "--out", str(run), *FORGET, "--set", "train.precision=bf16", "--set", "train.checkpointing=true",
                 "--set", "verify.enabled=false", *extra]) == 0
    [request] = json.loads((run / "manifest.json").read_text())["requests"]
    assert {"data", "forward", "backward", "merge", "save", "evaluate"} <= set(request["profile"])
    assert all(v >= 0 for v in request["profile"].values())
    model, _ = load_checkpoint(run / request["checkpoint"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # weights and merge stay fp32
    return request


def test_a_request_in_bf16_with_checkpointing_commits_fp32_weights_and_its_profile(base_checkpoint, fashion_subset,
                                                                                   tmp_path):
    """A few steps (quick); whether such a request forgets as well as an fp32 one is the slow test below."""
    _bf16_request(base_checkpoint, fashion_subset[0], tmp_path / "run", "--epochs", "1", "--ratio", "0.02",
                  "--set", "train.min_steps=4", "--accept-partial")


@pytest.mark.slow
def test_a_request_in_bf16_with_checkpointing_forgets_and_keeps_fp32_weights(base_checkpoint, fashion_subset,
                                                                              tmp_path):
    """About 50 s on one core (bf16 autocast on a CPU without bf16 units): `make test-slow`."""
    request = _bf16_request(base_checkpoint, fashion_subset[0], tmp_path / "run", "--set", "train.min_steps=40")
    m = request["metrics"]
    assert m["acc_f"] < 10 and m["acc_r"] >= m["acc_r_before"] - 5, m  # the same bar as an fp32 request


def test_fp16_scales_the_loss_only_where_it_needs_to():
    assert grad_scaler(TrainConfig(precision="fp16"), torch.device("cpu")) is None  # CPU autocast is bf16 territory
    assert grad_scaler(TrainConfig(precision="bf16"), torch.device("cuda")) is None
    with pytest.raises(GSLoRAError, match="train.precision"):
        TrainConfig(precision="fp8")


def test_checkpointing_is_refused_by_name_on_a_model_without_it():
    enable_checkpointing(build_model(tiny_model_config()))  # timm: available
    with pytest.raises(GSLoRAError, match="train.checkpointing"):
        enable_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2)))
