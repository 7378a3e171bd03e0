"""Loss terms and metrics on hand-made values."""

from __future__ import annotations

import pytest
import torch

from gslora.losses import bounded_forgetting_loss
from gslora.metrics import accuracy, h_mean, parameter_ratio, request_metrics


def test_bounded_loss_is_zero_past_bnd_and_pushes_ce_up_below_it():
    ce = torch.tensor([3.0, 10.0, 12.0], requires_grad=True)
    loss = bounded_forgetting_loss(ce, 10.0)
    assert loss.tolist() == [7.0, 0.0, 0.0]
    loss.sum().backward()
    assert ce.grad.tolist() == [-1.0, 0.0, 0.0]  # minimising raises the CE only while it is below BND


def test_accuracy_on_hand_made_logits():
    logits = torch.tensor([[5.0, 1, 0], [0, 2, 1], [0, 0, 3], [1, 0, 0], [0, 4, 0], [0, 0, 1]])
    labels = torch.tensor([0, 1, 2, 1, 1, 0])
    preds = logits.argmax(1)  # [0, 1, 2, 0, 1, 2]
    assert accuracy(preds, labels, [0]) == pytest.approx(50.0)
    assert accuracy(preds, labels, [1]) == pytest.approx(200 / 3)
    assert accuracy(preds, labels, [2]) == pytest.approx(100.0)
    assert accuracy(preds, labels, [0, 1, 2]) == pytest.approx(400 / 6)
    assert accuracy(preds, labels, [7]) is None


def test_h_mean_formula_and_reference_table_value():
    assert h_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    # [T3] GS-LoRA 100-20: dAcc_f = 74.65, Acc_r = 74.16 -> 74.40 (reference section 5)
    assert h_mean(74.65 - 0.0, 74.16) == pytest.approx(74.40, abs=0.01)
    assert h_mean(-5.0, 70.0) == 0.0
    assert h_mean(0.0, 0.0) == 0.0


def test_request_metrics_h_variants():
    m = request_metrics(acc_f=2.0, acc_r=70.0, acc_o=1.0, acc_f_before=80.0, acc_r_before=72.0, acc_f_original=90.0)
    assert m["h_mean"] == pytest.approx(2 * 78 * 70 / 148)
    assert m["h_mean_original"] == pytest.approx(2 * 88 * 70 / 158)
    assert m["h_exact"] == pytest.approx(2 * 80 * 72 / 152)
    assert parameter_ratio(245_760, 19_157_504) == pytest.approx(0.01283, abs=1e-5)
