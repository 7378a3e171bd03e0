"""torchrun: two CPU processes (gloo) split every batch and average the gradients, so each step is the step of one
process with the same global batch; only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gslora.cli import main
from gslora.models import load_checkpoint
from tests.conftest import tiny_model_config

FORGET = ["--classes", "Bag,Sneaker", "--ratio", "0.1", "--epochs", "1", "--batch-size", "32", "--lr", "0.01",
          "--bnd", "10", "--device", "cpu", "-q", "--accept-partial", "--set", "train.min_steps=24",
          "--set", "verify.enabled=false"]


def _run(prefix: list[str], args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    return subprocess.run([*prefix, "-m", "gslora", *args], capture_output=True, text=True, timeout=600, env=env)


def _gradient_worker(rank: int, init: str, out: str) -> None:
    """One of two ranks: the full batch's gradient, and this rank's share's gradient averaged over both ranks."""
    from gslora.data import ImageSet, Request
    from gslora.engine import distributed
    from gslora.methods import TaskContext, build_method
    from gslora.models import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)  # the same model, LoRA initialisation and batch on both ranks
    model = build_model(tiny_model_config(depth=2))
    x = torch.randint(0, 255, (14, 1, 28, 28), dtype=torch.uint8)
    forget, retain = ImageSet(x[:6], torch.zeros(6, dtype=torch.long)), ImageSet(x[6:], torch.arange(8) % 9 + 1)
    method = build_method({"name": "gs_lora", "bnd": 10.0, "lora_alpha": 8.0})
    method.setup_task(model, TaskContext(Request(0, (0,), tuple(range(1, 10)), ()), 1, 1, forget, retain))
    with torch.no_grad():  # LoRA B starts at zero: give it values, so every LoRA tensor gets a gradient
        for p in method.trainable_parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    params = method.trainable_parameters()
    batch = ((forget.images, forget.labels), (retain.images, retain.labels))

    def gradients(parts) -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        method.training_step(*parts, epoch=0)["loss"].backward()
        distributed.average_gradients(params)
        return [p.grad.clone() for p in params]

    shared = gradients(distributed.shard(batch))
    torch.save({"shared": shared, "full": [g for g in _full(gradients, batch)]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _full(gradients, batch) -> list[torch.Tensor]:
    """The full batch on every rank: the average of identical gradients is the gradient itself."""
    from gslora.engine import distributed

    active = distributed.active
    distributed.active = lambda: False  # shard() passes the batch through; average_gradients does nothing
    try:
        return gradients(batch)
    finally:
        distributed.active = active


def test_two_ranks_take_the_step_of_one_process_with_their_global_batch(tmp_path):
    """The averaged gradient of two ranks' shares equals the full batch's gradient (float tolerance), and both ranks
    hold the same one: what makes the ranks' weights stay equal and equal to one process's."""
    mp.spawn(_gradient_worker, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank in ranks:
        assert len(rank["full"]) == len(rank["shared"]) > 0
        for full, shared in zip(rank["full"], rank["shared"]):
            assert full.abs().max() > 0
            torch.testing.assert_close(shared, full, atol=1e-6, rtol=1e-5)
    for a, b in zip(ranks[0]["shared"], ranks[1]["shared"]):
        assert torch.equal(a, b)


def test_torchrun_runs_a_request_with_rank_0_writing(base_checkpoint, fashion_subset, tmp_path):
    """End to end through torchrun: one run directory, written by rank 0, with the request's processes recorded, and
    a model that behaves as one process's (the weights differ by float rounding that Adam's normalised steps can
    amplify over many steps, so the comparison is on predictions)."""
    from gslora.config import DataConfig
    from gslora.data import load_dataset
    from gslora.engine import predict

    data, _ = fashion_subset
    args = ["forget", "--checkpoint", str(base_checkpoint), "--data", str(data), *FORGET]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # one process: this one (no start-up to pay)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
               [*args, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run directory:") == 1  # rank 0 speaks (and writes) for both
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gslora-rank")]  # rank 1's private copy is gone
    runs = [json.loads((tmp_path / name / "manifest.json").read_text())["requests"][0] for name in ("one", "two")]
    assert runs[0]["steps"] == runs[1]["steps"] >= 24 and (runs[0]["processes"], runs[1]["processes"]) == (1, 2)
    base, _ = load_checkpoint(base_checkpoint)
    merged, _ = load_checkpoint(tmp_path / "two" / runs[1]["checkpoint"])
    assert any(not torch.equal(base.state_dict()[k], v) for k, v in merged.state_dict().items())  # it did change
    test = load_dataset(DataConfig(dataset=str(data))).test
    top1 = [predict(load_checkpoint(tmp_path / name / r["checkpoint"])[0], test, device=torch.device("cpu")).top1
            for name, r in zip(("one", "two"), runs)]
    assert (top1[0] == top1[1]).float().mean() >= 0.99
    assert abs(runs[0]["metrics"]["acc_f"] - runs[1]["metrics"]["acc_f"]) <= 1.0
    assert abs(runs[0]["metrics"]["acc_r"] - runs[1]["metrics"]["acc_r"]) <= 1.0


def test_each_rank_takes_every_nth_item_of_a_batch(monkeypatch):
    from gslora.engine import distributed

    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    x, y, targets = torch.arange(5), torch.arange(5) * 10, [{"i": i} for i in range(5)]
    for rank, expected in ((0, [0, 2, 4]), (1, [1, 3])):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        (xs, ys), ts = distributed.shard(((x, y), targets))
        assert xs.tolist() == expected and ys.tolist() == [10 * i for i in expected]
        assert [t["i"] for t in ts] == expected
    one = (torch.arange(1), torch.arange(1))
    assert distributed.shard(one) is one  # too small to split: every rank computes it all
