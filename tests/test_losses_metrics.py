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


def _hits(labels: torch.Tensor, right: torch.Tensor, *, forget=(1,), retain=(0, 2), num_classes: int = 3) -> dict:
    """A request's hits record with the original model right on every image and ``right`` after it."""
    from gslora.metrics.paired import hits_record

    return hits_record(labels.clone(), torch.where(right, labels, labels + 10), labels=labels,
                       num_classes=num_classes, forget=forget, retain=retain)


def test_hits_are_kept_per_image_in_class_order_and_give_the_request_figures_back():
    from gslora.metrics.paired import hits_h, read_hits

    labels = torch.tensor([2, 0, 1, 0, 1, 2, 1, 0, 0])
    right = torch.tensor([True, False, False, True, True, True, False, True, True])
    record = _hits(labels, right)
    before, after = read_hits(record)
    assert record["class_counts"] == [4, 3, 2] and before.all()
    assert after.tolist() == [False, True, True, True, False, True, False, True, True]  # class 0, then 1, then 2
    h, [figures] = hits_h([record], resamples=10)
    expected = request_metrics(acc_f=100 / 3, acc_r=500 / 6, acc_o=None, acc_f_before=100.0, acc_r_before=100.0,
                               acc_f_original=100.0)
    for key in ("h_mean", "acc_f", "acc_r", "acc_f_before", "acc_r_before"):
        assert figures[key] == pytest.approx(expected[key])
    assert h.shape == (11, 1) and h[0, 0] == pytest.approx(expected["h_mean"])


def test_resamples_redraw_each_class_with_replacement_and_the_same_for_every_vector():
    from gslora.metrics.paired import resampled_sums

    counts = [2, 3, 0, 1]
    correct = torch.tensor([True, False, True, True, False, True])
    sums = resampled_sums(correct[None], counts, torch.eye(4)[None], resamples=500,
                          generator=torch.Generator().manual_seed(0))[0]  # one vector, one set per class
    assert sums[0].tolist() == [1.0, 2.0, 0.0, 1.0]  # the first row is the images themselves
    assert (sums[1:, 3] == 1.0).all() and (sums[1:, 2] == 0).all() and ((sums[1:, 0] >= 0) & (sums[1:, 0] <= 2)).all()
    assert len(sums[1:, 1].unique()) > 1  # class 1's hits vary between draws (a shuffle would keep them at 2)
    assert (sums[1:, 1] == 3).any()  # ... with replacement: one image drawn three times
    # the draws: class by class, randint(count, (resamples, count)) from the generator (what the paired.json files of
    # 2026-12-05 were drawn with); the same for every vector of a call
    generator, expected, start = torch.Generator().manual_seed(0), torch.zeros(500, 4, dtype=torch.float64), 0
    for c, count in enumerate(counts):
        if count:
            expected[:, c] = correct[start + torch.randint(count, (500, count), generator=generator)].double().sum(1)
        start += count
    assert torch.equal(sums[1:], expected)
    # two vectors, one summed over classes {0, 1}, the other per class: the same draws for both
    groups = torch.zeros(2, 4, 4)
    groups[0, [0, 1], 0] = 1
    groups[1] = torch.eye(4)
    both = resampled_sums(torch.stack([correct, ~correct]), counts, groups, resamples=500,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(both[0, :, 0], sums[:, 0] + sums[:, 1]) and (both[0, :, 1:] == 0).all()
    assert torch.equal(sums + both[1], torch.tensor(counts, dtype=torch.float64).expand(501, 4))


def test_hits_of_other_images_are_not_paired_and_an_empty_class_set_has_no_h():
    from gslora.metrics.paired import against_first, hits_h, rows_h

    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    right = torch.tensor([True, False, True, True, False, False])
    shuffled = labels[[1, 0, 2, 3, 4, 5]]  # the same class counts, other images at the positions
    other = _hits(shuffled, right)
    with pytest.raises(ValueError, match="different evaluation images"):
        rows_h({"a": [_hits(labels, right)], "b": [other]}, resamples=10)
    rows = {"a": {"tasks": [{"hits": _hits(labels, right)}]}, "b": {"tasks": [{"hits": other}]},
            "c": {"tasks": [{"hits": _hits(labels, ~right)}]}}
    assert list(against_first(rows, resamples=10)) == ["c"]  # b left out, not paired position by position
    with pytest.raises(ValueError, match="no evaluation images"):
        hits_h([_hits(labels, right, forget=(3,), retain=(0, 1, 2), num_classes=4)], resamples=10)


def test_a_paired_difference_is_zero_for_one_row_and_clear_for_a_row_right_on_more_images():
    from gslora.metrics.paired import against_first

    labels = torch.arange(3).repeat_interleave(40)
    g = torch.Generator().manual_seed(1)
    right = torch.rand(120, generator=g) < 0.7
    right[labels == 1] = False  # forgotten
    better = right | (labels != 1)  # every retained image right

    def row(hits_after: torch.Tensor) -> dict:
        return {"tasks": [{"hits": _hits(labels, hits_after)}]}

    pairs = against_first({"ref": row(right), "same": row(right), "better": row(better)}, resamples=300)
    assert pairs["same"]["mean_h_difference"] == 0 and pairs["same"]["ci95"] == [0.0, 0.0]
    assert pairs["better"]["mean_h_difference"] > 0 and pairs["better"]["ci95"][0] > 0
    assert pairs["better"]["share_a_ahead"] == 1.0 and pairs["better"]["reference"] == "ref"
    assert against_first({"ref": row(right), "other": {"tasks": [{"acc_f": 0.0}]}}) == {}  # no hits, no pairs
