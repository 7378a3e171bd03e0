"""torchrun: two CPU processes (gloo) split every batch and average the gradients, so the run they write equals one
process's run with the same global batch; only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from gslora.models import load_checkpoint

FORGET = ["--classes", "Bag,Sneaker", "--ratio", "0.1", "--epochs", "1", "--batch-size", "32", "--lr", "0.01",
          "--bnd", "10", "--device", "cpu", "-q", "--accept-partial", "--set", "train.min_steps=24",
          "--set", "verify.enabled=false"]


def _run(prefix: list[str], args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    return subprocess.run([*prefix, "-m", "gslora", *args], capture_output=True, text=True, timeout=600, env=env)


def test_two_processes_train_the_model_of_one_with_the_same_global_batch(base_checkpoint, fashion_subset, tmp_path):
    data, _ = fashion_subset
    args = ["forget", "--checkpoint", str(base_checkpoint), "--data", str(data), *FORGET]
    one = _run([sys.executable], [*args, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
               [*args, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run directory:") == 1  # rank 0 speaks (and writes) for both
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gslora-rank")]  # rank 1's private copy is gone
    runs = [json.loads((tmp_path / name / "manifest.json").read_text())["requests"][0] for name in ("one", "two")]
    assert runs[0]["steps"] == runs[1]["steps"] >= 24 and (runs[0]["processes"], runs[1]["processes"]) == (1, 2)
    a, b = (load_checkpoint(tmp_path / name / r["checkpoint"])[0].state_dict() for name, r in zip(("one", "two"),
                                                                                                    runs))
    for key in a:  # the same weights up to the order of float sums (the batch mean is taken in two halves)
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4, msg=key)
    base, _ = load_checkpoint(base_checkpoint)
    assert any(not torch.equal(base.state_dict()[k], a[k]) for k in a)  # the request did change the model
    assert abs(runs[0]["metrics"]["acc_f"] - runs[1]["metrics"]["acc_f"]) < 0.5


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
