"""GS-LoRA++ prototype terms, the missing-class setting, the CosFace head and verification metrics."""

from __future__ import annotations

import pytest
import torch

from gslora.config import DataConfig, ForgetTrainConfig, ModelConfig, SequenceConfig
from gslora.data import ImageSet, Request, build_requests, class_order, load_dataset, request_data
from gslora.engine.distributed import interleave
from gslora.engine.evaluate import predict
from gslora.engine.loop import batches, grouped_index_batches, index_batches, train_request
from gslora.errors import GSLoRAError
from gslora.losses import (
    absorb_loss,
    class_prototypes,
    impostor_similarity,
    nearest_prototype,
    prototype_distance,
    prototype_distances,
    prototype_pull_loss,
    prototype_push_loss,
    scatter_loss,
)
from gslora.methods import GSLoRAPP, GSLoRAPPConfig, TaskContext
from gslora.metrics import tar_at_far, verification
from gslora.models import build_model
from gslora.models.heads import CosFaceHead
from tests.conftest import make_npz, tiny_model_config


def test_prototypes_are_exact_class_means():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [-1.0, 5.0]])
    labels = torch.tensor([0, 0, 2, 0])
    protos, present = class_prototypes(z, labels, num_classes=4)
    assert present.tolist() == [True, False, True, False]
    torch.testing.assert_close(protos[0], torch.tensor([1.0, 11 / 3]))
    torch.testing.assert_close(protos[2], torch.tensor([10.0, 0.0]))


@pytest.mark.parametrize("kind", ["kl", "cosine"])
def test_push_is_zero_past_bnd_and_pull_is_zero_at_the_prototype(kind):
    p = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    assert prototype_pull_loss(p.clone(), p, kind).item() == pytest.approx(0.0, abs=1e-6)
    far = torch.tensor([[-5.0, 9.0, 0.0], [7.0, -6.0, 0.0]])
    d = prototype_distance(far, p, kind).item()
    assert d > 0
    assert prototype_push_loss(far, p, bnd=d * 0.9, kind=kind).item() == 0.0
    assert prototype_push_loss(far, p, bnd=d + 1.0, kind=kind).item() == pytest.approx(1.0, rel=1e-5)


def test_kl_distance_is_the_reference_formula():
    z, p = torch.randn(4, 6), torch.randn(4, 6)
    expected = sum((p[i].softmax(0) * (p[i].log_softmax(0) - z[i].log_softmax(0))).sum() for i in range(4)) / 4
    assert prototype_distance(z, p, "kl").item() == pytest.approx(expected.item(), rel=1e-5)


def test_gs_lora_pp_adds_weighted_prototype_terms():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    x = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
    forget, retain = ImageSet(x[:4], torch.tensor([0, 0, 3, 3])), ImageSet(x[4:], torch.tensor([1, 1, 2, 2]))
    method = GSLoRAPP(GSLoRAPPConfig(w_f=[0.5, 0.1], w_r=0.25, bnd_pro=30.0, beta=0.2, alpha=0.0))
    method.setup_task(model, TaskContext(Request(0, (0, 3), (1, 2), ()), 1, 1, forget_data=forget,
                                         retain_data=retain))
    assert method.has_prototype.tolist() == [True, True, True, True] + [False] * 6
    expected = class_prototypes(model.eval().embed(x), torch.cat([forget.labels, retain.labels]), 10)[0]
    torch.testing.assert_close(method.prototypes, expected)
    terms = method.training_step((forget.images, forget.labels), (retain.images, retain.labels), epoch=0)
    base = terms["retain"] + 0.2 * terms["forget"]
    assert terms["loss"].item() == pytest.approx((base + 0.5 * terms["proto_push"] + 0.25 * terms["proto_pull"]).item(),
                                                 rel=1e-5)
    assert terms["proto_push"].item() == pytest.approx(30.0, abs=0.5)  # fresh adapter: embeddings sit at the prototypes


@pytest.mark.parametrize("kind", ["kl", "cosine"])
def test_absorb_pulls_to_the_nearest_given_prototype(kind):
    p = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    z = torch.tensor([[3.0, 0.5, 0.0], [0.1, 0.2, 5.0], [0.0, 4.0, 0.0]])
    assert nearest_prototype(z, p, kind).tolist() == [0, 2, 1]
    nearest = torch.stack([prototype_distances(z, p[[c] * 3], kind) for c in range(3)], 1).min(1).values
    assert absorb_loss(z, p, kind).item() == pytest.approx(nearest.mean().item(), rel=1e-5)
    assert absorb_loss(p[[2, 0]].clone(), p, kind).item() == pytest.approx(0.0, abs=1e-6)
    z = z.requires_grad_()
    absorb_loss(z, p, kind).backward()
    moved = (z - 0.1 * z.grad).detach()
    assert absorb_loss(moved, p, kind) < absorb_loss(z.detach(), p, kind)  # a step on it moves z toward the target


def test_gs_lora_pp_absorb_targets_only_retained_classes():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    x = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
    forget, retain = ImageSet(x[:4], torch.tensor([0, 0, 3, 3])), ImageSet(x[4:], torch.tensor([1, 1, 2, 2]))
    method = GSLoRAPP(GSLoRAPPConfig(w_f=0.5, bnd_pro=30.0, beta=0.2, alpha=0.0, w_absorb=2.0))
    method.setup_task(model, TaskContext(Request(0, (0, 3), (1, 2, 4), ()), 1, 1, forget_data=forget,
                                         retain_data=retain))  # class 4 is retained but has no images
    terms = method.training_step((forget.images, forget.labels), (retain.images, retain.labels), epoch=0)
    z_f = model.eval().embed(forget.images)
    to_retained = torch.stack([prototype_distances(z_f, method.prototypes[[c] * 4]) for c in (1, 2)], 1)
    assert terms["absorb"].item() == pytest.approx(to_retained.min(1).values.mean().item(), rel=1e-4)
    expected = terms["retain"] + 0.2 * terms["forget"] + 0.5 * terms["proto_push"] + 2.0 * terms["absorb"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_scatter_penalises_only_same_class_pairs_above_the_margin():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    cos = torch.nn.functional.cosine_similarity
    same = [cos(z[0:1], z[1:2]).item(), cos(z[2:3], z[3:4]).item()]  # 0.707, 0.0995
    assert scatter_loss(z, labels, margin=0.5).item() == pytest.approx((same[0] - 0.5) / 2, rel=1e-5)
    assert scatter_loss(z, labels, margin=0.8).item() == 0.0
    assert scatter_loss(z * 7.0, labels, margin=0.5).item() == pytest.approx((same[0] - 0.5) / 2, rel=1e-5)
    different = [cos(z[i:i + 1], z[j:j + 1]).item() for i in (0, 1) for j in (2, 3)]
    assert impostor_similarity(z, labels).item() == pytest.approx(sum(different) / 4, rel=1e-5)
    lonely = torch.randn(3, 2, requires_grad=True)
    loss = scatter_loss(lonely, torch.tensor([0, 1, 2]), margin=0.0)
    loss.backward()  # no pair of one class: zero, and still part of the graph
    assert loss.item() == 0.0 and torch.count_nonzero(lonely.grad) == 0
    z = z.clone().requires_grad_()
    scatter_loss(z, labels, margin=0.0).backward()
    moved = (z - 0.1 * z.grad).detach()
    assert cos(moved[0:1], moved[1:2]).item() < same[0]  # a step on it pulls same-class images apart


def test_gs_lora_pp_scatter_margin_is_the_retained_impostor_similarity():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    x = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    forget = ImageSet(x[:4], torch.tensor([0, 0, 3, 3]))
    retain = ImageSet(x[4:], torch.tensor([1, 1, 2, 2, 5, 5]))
    method = GSLoRAPP(GSLoRAPPConfig(w_f=0.5, bnd_pro=30.0, beta=0.2, alpha=0.0, w_scatter=3.0))
    method.setup_task(model, TaskContext(Request(0, (0, 3), (1, 2, 5), ()), 1, 1, forget_data=forget,
                                         retain_data=retain))
    embedded = model.eval().embed(x)
    assert method.impostor_similarity == pytest.approx(impostor_similarity(embedded[4:], retain.labels).item(),
                                                       rel=1e-4)  # the forgotten classes play no part in it
    terms = method.training_step((forget.images, forget.labels), (retain.images, retain.labels), epoch=0)
    z_f = model.eval().embed(forget.images)
    assert terms["scatter"].item() == pytest.approx(
        scatter_loss(z_f, forget.labels, method.impostor_similarity).item(), rel=1e-4, abs=1e-6)
    expected = terms["retain"] + 0.2 * terms["forget"] + 0.5 * terms["proto_push"] + 3.0 * terms["scatter"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    off = GSLoRAPP(GSLoRAPPConfig(w_f=0.5, bnd_pro=30.0, beta=0.2, alpha=0.0))
    off.setup_task(model, TaskContext(Request(0, (0, 3), (1, 2, 5), ()), 1, 1, forget_data=forget,
                                      retain_data=retain))
    assert "scatter" not in off.training_step((forget.images, forget.labels), (retain.images, retain.labels),
                                              epoch=0)
    with pytest.raises(GSLoRAError, match="method.w_scatter"):
        GSLoRAPPConfig(w_scatter=-1.0)


def test_gs_lora_pp_scatter_margin_samples_across_classes_and_needs_two_of_them(monkeypatch, caplog):
    import gslora.methods.gs_lora_pp as module

    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    x = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    forget = ImageSet(x[:4], torch.tensor([0, 0, 3, 3]))
    retain = ImageSet(x[4:], torch.tensor([1] * 6 + [2] * 6))  # sorted by class: a leading slice holds one class
    request = Request(0, (0, 3), (1, 2), ())
    monkeypatch.setattr(module, "SCATTER_SAMPLE", 4)
    seen = []
    monkeypatch.setattr(module, "impostor_similarity", lambda z, labels: seen.append(labels.tolist()) or
                        impostor_similarity(z, labels))
    method = GSLoRAPP(GSLoRAPPConfig(w_scatter=1.0))
    method.setup_task(model, TaskContext(request, 1, 1, forget_data=forget, retain_data=retain))
    assert len(seen[0]) == 4 and set(seen[0]) == {1, 2} and method.impostor_similarity is not None
    one_class = ImageSet(x[4:10], torch.tensor([1] * 6))
    method = GSLoRAPP(GSLoRAPPConfig(w_scatter=1.0))
    method.setup_task(model, TaskContext(request, 1, 1, forget_data=forget, retain_data=one_class))
    assert method.impostor_similarity is None and "fewer than 2 classes" in caplog.text
    terms = method.training_step((forget.images, forget.labels), (one_class.images, one_class.labels), epoch=0)
    assert "scatter" not in terms  # no margin, no term


def test_grouped_forget_batches_keep_runs_of_one_class_and_cover_every_image_once():
    labels = torch.tensor([c for c in range(20) for _ in range(4)])  # a 4-shot request of 20 classes
    generator = torch.Generator().manual_seed(0)
    passes = [list(grouped_index_batches(labels, 4, 2, generator)) for _ in range(2)]
    for one_pass in passes:
        assert sorted(torch.cat(one_pass).tolist()) == list(range(80))  # one pass: each image once
        for idx in one_pass:  # each batch: two runs of two images of one class (the two may share a class)
            assert len(idx) == 4 and all(n % 2 == 0 for n in torch.bincount(labels[idx]).tolist())
    assert not torch.equal(torch.cat(passes[0]), torch.cat(passes[1]))  # re-shuffled on each pass
    counts = [3, 5, 2, 7, 1] * 4  # odd counts: each class ends in a shorter run
    uneven = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    order = torch.cat(list(grouped_index_batches(uneven, 4, 2, generator)))
    assert sorted(order.tolist()) == list(range(len(uneven)))
    segments = 1 + int((uneven[order][1:] != uneven[order][:-1]).sum())  # stretches of one class in the order
    assert segments <= sum((n + 1) // 2 for n in counts)  # 44 runs (a shuffle of 72 images: about 70 stretches)
    again = torch.cat(list(grouped_index_batches(uneven, 4, 2, torch.Generator().manual_seed(3))))
    assert torch.equal(again, torch.cat(list(grouped_index_batches(uneven, 4, 2, torch.Generator().manual_seed(3)))))
    with pytest.raises(GSLoRAError, match="train.forget_group"):
        ForgetTrainConfig(forget_group=0)


def test_grouped_forget_batches_give_each_process_whole_runs():
    """distributed.shard hands rank r every n-th image of a batch; the grouped order is interleaved for it, so each of
    2 processes still gets a pair of one class (without it, [a, a, b, b] would split into [a, b] and [a, b])."""
    assert interleave(torch.arange(5), 2).tolist() == [0, 3, 1, 4, 2]  # rank 0 gets 0, 1, 2; rank 1 gets 3, 4
    assert torch.equal(interleave(torch.arange(5), 1), torch.arange(5))
    labels = torch.tensor([c for c in range(20) for _ in range(4)])
    for idx in grouped_index_batches(labels, 4, 2, torch.Generator().manual_seed(0), shares=2):
        for r in range(2):
            share = labels[idx[r::2]]
            assert share[0] == share[1], idx


def test_ungrouped_forget_batches_are_the_plain_shuffle_of_before():
    data = ImageSet(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 3)
    plain = [data.labels[idx] for idx in index_batches(10, 4, torch.Generator().manual_seed(5))]
    now = [y for _, y in batches(data, 4, torch.Generator().manual_seed(5), group=1)]
    assert all(torch.equal(a, b) for a, b in zip(plain, now, strict=True))


@pytest.mark.parametrize("group", [1, 2])
def test_train_request_cuts_forget_batches_by_train_forget_group(group):
    """With ``forget_group: 2`` the scatter term sees a same-class pair at every step; with the plain shuffle of a
    4-shot request of 20 classes only about one batch in five holds one."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(num_classes=24))
    x = torch.randint(0, 255, (88, 1, 28, 28), dtype=torch.uint8)
    forget = ImageSet(x[:80], torch.tensor([c for c in range(20) for _ in range(4)]))
    retain = ImageSet(x[80:], torch.tensor([20, 21, 22, 23] * 2))
    method = GSLoRAPP(GSLoRAPPConfig(w_f=0.5, bnd_pro=30.0, beta=0.2, alpha=0.0, w_scatter=1.0))
    task = TaskContext(Request(0, tuple(range(20)), (20, 21, 22, 23), ()), epochs=10, steps_per_epoch=2,
                       forget_data=forget, retain_data=retain)
    method.setup_task(model, task)
    seen = []
    step = method.training_step
    method.training_step = lambda f, r, *, epoch: seen.append(f[1].clone()) or step(f, r, epoch=epoch)
    train_request(method, task, forget, retain, ForgetTrainConfig(epochs=10, min_steps=0, batch_size=4,
                                                                   forget_group=group, device="cpu"),
                  device=torch.device("cpu"))
    with_pair = sum(int(torch.bincount(y).max()) >= 2 for y in seen)
    assert len(seen) == 20
    assert with_pair == 20 if group == 2 else with_pair < 10


def test_missing_classes_get_no_training_images(tmp_path):
    dataset = load_dataset(DataConfig(dataset=str(make_npz(tmp_path / "d.npz", per_class_train=[6] * 10))))
    config = SequenceConfig(num_requests=2, classes_per_request=2, missing_classes=3, ratio=1.0)
    order = class_order(10, config.order_seed)
    requests = build_requests(config, dataset.classes)
    for r in requests:
        assert r.missing == tuple(order[:3]) and set(r.missing) <= set(r.retain)
        data = request_data(dataset, r, config)
        trained = set(dataset.train.labels[data.retain_indices].tolist())
        assert trained == set(r.retain) - set(r.missing)
    with pytest.raises(GSLoRAError, match="sequence.missing_classes keeps without data"):
        build_requests(SequenceConfig(requests=[[order[0]]], missing_classes=3), dataset.classes)


def test_each_request_can_draw_the_earlier_requests_classes_for_hold_old(tmp_path):
    from gslora.tasks.classification import Classification

    dataset = load_dataset(DataConfig(dataset=str(make_npz(tmp_path / "d.npz", per_class_train=[10] * 10))))
    config = SequenceConfig(num_requests=3, classes_per_request=2, ratio=0.5, min_per_class=1)
    for r in build_requests(config, dataset.classes):
        old = Classification().old_subset(dataset, r, config)
        assert sorted(old.labels.tolist()) == sorted(c for c in r.old for _ in range(5))  # ratio 0.5 of each
    assert len(r.old) == 4  # the last request holds both earlier requests' classes


def test_cosface_head_margin_and_margin_accuracy():
    head = CosFaceHead(2, 3, s=10.0, m=0.4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    emb = torch.tensor([[1.0, 0.8]])  # cos to class 0: 0.781, class 1: 0.625
    plain = head(emb)
    torch.testing.assert_close(plain, 10 * torch.nn.functional.normalize(emb) @ head.weight.T)
    margin = head(emb, torch.tensor([0]))
    assert margin[0, 0].item() == pytest.approx(plain[0, 0].item() - 4.0)
    assert plain.argmax().item() == 0 and margin.argmax().item() == 1  # right by cosine, wrong with the margin

    model = build_model(ModelConfig(depth=1, width=32, heads=2, patch_size=7, num_classes=5, head="cosface"))
    data = ImageSet(torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 4, 0]))
    preds = predict(model, data, device=torch.device("cpu"), embeddings=True)
    assert preds.margin_top1 is not None and preds.embeddings.shape == (6, 32)
    plain_right = preds.top1 == data.labels
    assert not ((preds.margin_top1 == data.labels) & ~plain_right).any()  # the margin can only take hits away


def test_tar_at_far_on_hand_made_scores_and_embeddings():
    impostor = torch.arange(100, dtype=torch.float) / 100  # 0.00 .. 0.99
    genuine = torch.tensor([0.985, 0.995, 0.5, 0.2])
    assert tar_at_far(genuine, impostor, 0.01) == pytest.approx(25.0)  # threshold 0.99: one genuine pair above
    assert tar_at_far(genuine, impostor, 0.1) == pytest.approx(50.0)  # threshold 0.90
    e = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [-1.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    out = verification(e, labels, {"a": [0], "b": [1], "c": [2]}, fars=[0.1])
    assert out["a"]["far=0.1"] == 100.0 and out["b"]["far=0.1"] == 100.0 and out["c"]["far=0.1"] is None


def test_hold_old_bounds_and_scatters_the_held_classes_apart_from_the_request():
    """hold_old: the forget term and GS-LoRA++'s push stay on the request's classes; the held classes (forgotten
    earlier) get their own bounded term and scatter term, each weighted by hold_old; the loop appends a batch of
    them to every forget batch, and without held images (or with the weight 0) nothing changes."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    x = torch.randint(0, 255, (14, 1, 28, 28), dtype=torch.uint8)
    forget = ImageSet(x[:4], torch.tensor([0, 0, 3, 3]))
    old = ImageSet(x[[4, 4, 6, 6]], torch.tensor([4, 4, 5, 5]))  # pairs of one image: alike above the margin
    retain = ImageSet(x[8:], torch.tensor([1, 1, 2, 2, 6, 6]))
    request = Request(1, (0, 3), (1, 2, 6), (4, 5))
    config = dict(w_f=0.5, bnd_pro=30.0, beta=0.2, alpha=0.0, w_scatter=2.0, bnd=50.0)
    method = GSLoRAPP(GSLoRAPPConfig(**config, hold_old=3.0))
    method.setup_task(model, TaskContext(request, 1, 1, forget_data=forget, retain_data=retain, old_data=lambda: old))
    assert method.held_data() is old
    both = ImageSet.join(forget, old)
    terms = method.training_step((both.images, both.labels), (retain.images, retain.labels), epoch=0)
    logits, z = model.eval().forward_features(both.images, both.labels)
    assert terms["forget_ce"].item() == pytest.approx(F.cross_entropy(logits[:4], forget.labels).item(), rel=1e-4)
    assert terms["hold_old"].item() == pytest.approx(50.0 - F.cross_entropy(logits[4:], old.labels).item(),
                                                     rel=1e-4)
    pushed = prototype_push_loss(z[:4], method.prototypes[forget.labels], 30.0, "kl")  # the request's images only
    assert terms["proto_push"].item() == pytest.approx(pushed.item(), rel=1e-4)
    margin = method.impostor_similarity
    assert terms["scatter"].item() == pytest.approx(scatter_loss(z[:4], forget.labels, margin).item(), abs=1e-5)
    assert terms["hold_old_scatter"].item() == pytest.approx(scatter_loss(z[4:], old.labels, margin).item(),
                                                             abs=1e-5)
    assert terms["hold_old_scatter"].item() > 0  # the check above compares something
    expected = (terms["retain"] + 0.2 * terms["forget"] + 0.5 * terms["proto_push"] + 2.0 * terms["scatter"]
                + 0.2 * 3.0 * terms["hold_old"] + 2.0 * 3.0 * terms["hold_old_scatter"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    off = GSLoRAPP(GSLoRAPPConfig(**config))
    off.setup_task(model, TaskContext(request, 1, 1, forget_data=forget, retain_data=retain, old_data=lambda: old))
    assert off.held_data() is None
    first = GSLoRAPP(GSLoRAPPConfig(**config, hold_old=3.0))  # request 0: nothing forgotten before, nothing held
    none = ImageSet(x[:0], torch.tensor([], dtype=torch.long))
    first.setup_task(model, TaskContext(Request(0, (0, 3), (1, 2, 6), ()), 1, 1, forget_data=forget,
                                        retain_data=retain, old_data=lambda: none))
    plain = off.training_step((forget.images, forget.labels), (retain.images, retain.labels), epoch=0)
    same = first.training_step((forget.images, forget.labels), (retain.images, retain.labels), epoch=0)
    assert first.held_data() is None and same.keys() == plain.keys() and "hold_old" not in same
    assert same["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)
    # a process's shard of a small batch may hold only held images: finite, the same terms, nothing of the request's
    alone = method.training_step((old.images, old.labels), (retain.images, retain.labels), epoch=0)
    assert alone.keys() == terms.keys() and all(torch.isfinite(v) for v in alone.values())
    assert alone["forget"].item() == 0.0 and alone["proto_push"].item() == 0.0 and alone["hold_old"].item() > 0
    seen = []

    def record(forget_batch, retain_batch, *, epoch):
        seen.append(forget_batch[1].tolist())
        return GSLoRAPP.training_step(method, forget_batch, retain_batch, epoch=epoch)

    method.training_step = record
    context = TaskContext(request, 1, 2, forget_data=forget, retain_data=retain, old_data=lambda: old)
    train_request(method, context, forget, retain, ForgetTrainConfig(epochs=1, min_steps=0, batch_size=3, lr=1e-3),
                  device=torch.device("cpu"))
    assert len(seen) == 2  # one step per retain batch; each forget batch: the request's images, then held ones
    for labels in seen:
        current = sum(label in (0, 3) for label in labels)
        assert 0 < current < len(labels) and set(labels[current:]) <= {4, 5}
    with pytest.raises(GSLoRAError, match="method.hold_old"):
        GSLoRAPPConfig(hold_old=-1.0)
