"""How far apart two methods are on the same evaluation images: a paired, class-stratified bootstrap of their H.

A request's record keeps which evaluation images the model got right before and after it (``hits_record``: one bit
per image, the images ordered by class, and each class's count), so two methods measured on the same images can be
compared after the fact without their models. Each resample redraws every class's images with replacement (a class
keeps its count); both methods, and all their requests, are scored on the same resamples, so what the images share
cancels out of the difference. The intervals leave out the spread between training seeds and any selection among
candidates.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import numpy as np
import torch

from gslora.metrics import h_mean


def class_order(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, list[int]]:
    """The evaluation images' positions sorted by class (stable: in their order within a class), and each class's
    image count."""
    return torch.argsort(labels, stable=True), torch.bincount(labels, minlength=num_classes).tolist()


def pack(correct: torch.Tensor) -> str:
    """One bit per image, base64 (the JSON form of a hits vector)."""
    return base64.b64encode(np.packbits(correct.cpu().numpy().astype(np.uint8)).tobytes()).decode("ascii")


def unpack(text: str, count: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:count]
    return torch.from_numpy(bits.astype(bool))


def hits_record(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, num_classes: int,
                forget: Sequence[int], retain: Sequence[int]) -> dict:
    """A request's ``hits``: top-1 correctness of the model before and after it on each evaluation image (class
    order, packed), the class counts and the request's forget and retain classes: all its H needs."""
    order, counts = class_order(labels, num_classes)
    return {"class_counts": counts, "forget": list(forget), "retain": list(retain),
            "before": pack((before == labels)[order]), "after": pack((after == labels)[order])}


def read_hits(record: dict) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(before, after, class counts) of a ``hits_record``."""
    count = sum(record["class_counts"])
    return unpack(record["before"], count), unpack(record["after"], count), record["class_counts"]


def resampled_class_sums(correct: torch.Tensor, class_counts: Sequence[int], resamples: int,
                         generator: torch.Generator) -> torch.Tensor:
    """(resamples + 1, classes): correct images per class, first on the images themselves, then on resamples that
    redraw each class's images with replacement (``correct``: one bool per image, in class order). The same
    generator state and class counts draw the same resamples for every vector."""
    sums = torch.zeros(resamples + 1, len(class_counts), dtype=torch.float64)
    start = 0
    for c, count in enumerate(class_counts):
        if count:
            block = correct[start:start + count].double()
            sums[0, c] = block.sum()
            sums[1:, c] = block[torch.randint(count, (resamples, count), generator=generator)].sum(1)
        start += count
    return sums


def request_h(before: torch.Tensor, after: torch.Tensor, class_counts: Sequence[int], forget: Sequence[int],
              retain: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
    """One request's H on each resample (from ``resampled_class_sums`` before and after it), and its figures
    without resampling (``h_mean``, ``acc_f``, ``acc_r``, ``acc_f_before``, ``acc_r_before``)."""
    counts = torch.tensor(class_counts, dtype=torch.float64)

    def accuracy(per_class: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        return 100.0 * per_class[:, list(classes)].sum(1) / counts[list(classes)].sum()

    acc = {"acc_f": accuracy(after, forget), "acc_r": accuracy(after, retain),
           "acc_f_before": accuracy(before, forget), "acc_r_before": accuracy(before, retain)}
    drop = (acc["acc_f_before"] - acc["acc_f"]).tolist()
    h = torch.tensor([h_mean(d, r) for d, r in zip(drop, acc["acc_r"].tolist(), strict=True)], dtype=torch.float64)
    return h, {"h_mean": float(h[0]), **{k: float(v[0]) for k, v in acc.items()}}


def hits_h(hits: Sequence[dict], resamples: int, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """(resamples + 1, requests) H of one method's requests (their ``hits_record``s) on the resamples that ``seed``
    draws, and each request's figures without resampling. The same seed and class counts give every method, and
    every request, the same resamples."""
    counts = hits[0]["class_counts"]
    columns, figures = [], []
    for record in hits:
        if record["class_counts"] != counts:
            raise ValueError("the requests were measured on different evaluation images")
        before, after, _ = read_hits(record)
        sums = [resampled_class_sums(v, counts, resamples, torch.Generator().manual_seed(seed))
                for v in (before, after)]
        h, figure = request_h(*sums, counts, record["forget"], record["retain"])
        columns.append(h)
        figures.append(figure)
    return torch.stack(columns, dim=1), figures


def interval(values: torch.Tensor, level: float = 0.95) -> list[float]:
    """The percentile interval holding ``level`` of the values."""
    tail = (1.0 - level) / 2
    return [float(values.quantile(tail)), float(values.quantile(1.0 - tail))]


def paired_difference(h_a: torch.Tensor, h_b: torch.Tensor) -> dict:
    """Mean-H difference a - b over the requests (row 0 of both: the data itself, then resamples), its 95% interval,
    the share of resamples with a ahead, and the same per request."""
    difference = h_a - h_b
    mean = difference.mean(dim=1)
    return {"mean_h_difference": float(mean[0]), "ci95": interval(mean[1:]),
            "share_a_ahead": float((mean[1:] > 0).double().mean()),
            "per_request": [{"difference": float(difference[0, i]), "ci95": interval(difference[1:, i]),
                             "share_a_ahead": float((difference[1:, i] > 0).double().mean())}
                            for i in range(difference.shape[1])]}


def has_hits(row: dict) -> bool:
    """Whether every request of a comparison row keeps its ``hits``."""
    return bool(row.get("tasks")) and all("hits" in t for t in row["tasks"])


def against_first(methods: dict[str, dict], resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Each row that keeps its hits against the first such row (the reference): ``paired_difference`` of their
    mean H, plus both rows' mean H. Empty when fewer than two rows keep hits or their evaluation images differ."""
    rows = {label: row for label, row in methods.items() if has_hits(row)}
    if len(rows) < 2 or len({json.dumps(r["tasks"][0]["hits"]["class_counts"]) for r in rows.values()}) > 1:
        return {}
    if len({len(r["tasks"]) for r in rows.values()}) > 1:
        return {}
    h = {label: hits_h([t["hits"] for t in row["tasks"]], resamples, seed)[0] for label, row in rows.items()}
    reference, *others = rows
    return {label: {"reference": reference, "resamples": resamples, "seed": seed,
                    "mean_h": {label: float(h[label][0].mean()), reference: float(h[reference][0].mean())},
                    **paired_difference(h[label], h[reference])} for label in others}
