"""More than one process: ``torchrun --nproc_per_node N -m gslora forget|pretrain|compare ...``.

Every process runs the same command on the same data, in the same batch order (the seeds are shared); each step's
batches are split across the processes (rank r takes every N-th image from r), each process back-propagates its share
and the gradients are averaged with ``torch.distributed.all_reduce`` before the optimiser steps, so every process
holds the same weights, and the result is that of one process with the same global batch. Only rank 0 writes the
run directory (atomically, as always); the other ranks work in a private copy that is removed at the end. gloo on
CPUs, NCCL on GPUs (one GPU per process: ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

_private: list[Path] = []


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def init() -> None:
    """Join the process group torchrun describes (idempotent); NCCL and this process's GPU when CUDA is there."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def finish() -> None:
    """Leave the process group and remove this rank's private copies."""
    for path in _private:
        shutil.rmtree(path, ignore_errors=True)
    _private.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def writable_path(path: str | Path) -> str:
    """``path`` on rank 0; on the other ranks a private copy (of what is there now) that nobody else reads. Every
    rank calls it at the same point: they wait for each other, so no copy sees rank 0's writes."""
    if not active():
        return str(path)
    if rank() != 0:
        private = Path(tempfile.mkdtemp(prefix=f"gslora-rank{rank()}-"))
        _private.append(private)
        target = private / Path(path).name
        if Path(path).exists():
            shutil.copytree(path, target, symlinks=True)
        path = target
    dist.barrier()
    return str(path)


def shard(batch: Any) -> Any:
    """This rank's share of a batch: every ``world_size``-th item from ``rank`` of each tensor or list in ``batch``
    (tuples are walked). A batch too small to give every rank an item is not split (each rank computes all of it)."""
    if not active():
        return batch
    n, r = world_size(), rank()

    def size(x: Any) -> int:
        return min((size(v) for v in x), default=n) if isinstance(x, tuple) else len(x)

    if size(batch) < n:
        return batch

    def split(x: Any) -> Any:
        return tuple(split(v) for v in x) if isinstance(x, tuple) else x[r::n]

    return split(batch)


def interleave(items: torch.Tensor, n: int) -> torch.Tensor:
    """``items`` reordered so that ``shard``'s every-``n``-th split hands rank r the r-th contiguous piece of ``items``
    (pieces of ``shard``'s sizes); unchanged when ``n`` is 1 or ``shard`` would not split it."""
    if n == 1 or len(items) < n:
        return items
    out, start = torch.empty_like(items), 0
    for r in range(n):
        size = len(range(r, len(items), n))
        out[r::n] = items[start:start + size]
        start += size
    return out


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks (one flat all-reduce)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_values(values: dict[str, float]) -> dict[str, float]:
    """Per-key means over the ranks (each rank's loss terms are of its share of the batches)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return {k: float(v) / world_size() for k, v in zip(keys, flat.tolist())}
