"""Relearn time: how many optimiser steps of k-shot fine-tuning bring a forgotten class back.

The whole model (a copy) is fine-tuned with AdamW on k training images of each forgotten class and k of each
retained class, batches drawn with replacement; every ``eval_every`` steps the forgotten classes' test accuracy is
measured, and the count stops when it reaches ``target`` (half its value before the request) or at the cap.
Knowledge that only hides behind the head comes back in a few steps; a model that never saw the class needs as long
as Retrain does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from gslora.data import ImageSet, sample_per_class
from gslora.engine.evaluate import predict
from gslora.metrics import accuracy


def relearn_steps(model: torch.nn.Module, train: ImageSet, test: ImageSet, forgotten: list[int], retained: list[int],
                  target: float, *, shots: int, lr: float, batch_size: int, max_steps: int, eval_every: int,
                  device: torch.device, seed: int) -> dict[str, Any]:
    """Steps until the forgotten classes' test accuracy reaches ``target`` (percent); ``None`` past ``max_steps``."""
    torch.manual_seed(seed)
    student = copy.deepcopy(model).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    pool = sample_per_class(train.labels, [*forgotten, *retained], shots=shots, seed=seed)
    images, labels = train.images[pool], train.labels[pool]
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    curve = []

    def measure(step: int) -> float:
        acc = accuracy(predict(student, test, device=device).top1, test.labels, forgotten)
        curve.append([step, round(acc, 2)])
        return acc

    if measure(0) >= target:
        return {"steps": 0, "capped": False, "target": target, "curve": curve}
    for step in range(1, max_steps + 1):
        student.train()
        idx = torch.randint(len(labels), (batch_size,), generator=generator)
        x, y = images[idx].to(device), labels[idx].to(device)
        loss = F.cross_entropy(student(x, y), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 and measure(step) >= target:
            return {"steps": step, "capped": False, "target": target, "curve": curve}
    return {"steps": None, "capped": True, "target": target, "max_steps": max_steps, "curve": curve}
