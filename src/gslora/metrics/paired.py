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
import hashlib
import json
from collections.abc import Sequence

import torch

from gslora.metrics import h_mean


def labels_digest(labels: torch.Tensor) -> str:
    """SHA-256 of the evaluation labels in their order: two measurements on the same images share it."""
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()


_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack(correct: torch.Tensor) -> str:
    """One bit per image, the first image in the highest bit of the first byte, base64 (the JSON form of a hits
    vector)."""
    bits = torch.zeros(-(-len(correct) // 8) * 8, dtype=torch.uint8)
    bits[:len(correct)] = correct.cpu().to(torch.uint8)
    return base64.b64encode(bytes((bits.view(-1, 8) * _BITS).sum(1, dtype=torch.uint8).tolist())).decode("ascii")


def unpack(text: str, count: int) -> torch.Tensor:
    data = torch.tensor(list(base64.b64decode(text)), dtype=torch.uint8)
    return ((data[:, None] & _BITS) > 0).flatten()[:count]


def hits_record(before: torch.Tensor, after: torch.Tensor, *, labels: torch.Tensor, num_classes: int,
                forget: Sequence[int], retain: Sequence[int]) -> dict:
    """A request's ``hits``: top-1 correctness of the model before and after it on each evaluation image (class
    order, packed), the class counts, the labels' digest and the request's forget and retain classes: all its H
    needs."""
    order = torch.argsort(labels, stable=True)  # class by class, in their order within a class
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    return {"class_counts": counts, "labels_sha256": labels_digest(labels), "forget": list(forget),
            "retain": list(retain), "before": pack((before == labels)[order]), "after": pack((after == labels)[order])}


def read_hits(record: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(before, after) of a ``hits_record``, one bool per image in class order."""
    count = sum(record["class_counts"])
    return unpack(record["before"], count), unpack(record["after"], count)


def class_accuracy(record: dict) -> list[float]:
    """Per class (by class id), the percentage of its evaluation images right after the request of a ``hits_record``;
    nan for a class without images."""
    after = read_hits(record)[1].double()
    return [100.0 * block.mean().item() if len(block) else float("nan")
            for block in torch.split(after, record["class_counts"])]


def resampled_sums(correct: torch.Tensor, class_counts: Sequence[int], groups: torch.Tensor, *, resamples: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(vectors, resamples + 1, sets): correct images in each class set of each hits vector (``correct``: (vectors,
    images) bools in class order; ``groups``: (vectors, classes, sets), 1 where a class belongs to a vector's set),
    first on the images themselves, then on resamples that redraw each class's images with replacement, the same
    draws for every vector: class by class, ``randint(count, (resamples, count))`` from ``generator``. Memory grows
    with the sets, not the classes."""
    vectors, groups = correct.double(), groups.double()
    sums = torch.zeros(len(vectors), resamples + 1, groups.shape[2], dtype=torch.float64)
    start = 0
    for c, count in enumerate(class_counts):
        if count:
            block = vectors[:, start:start + count]
            picks = torch.randint(count, (resamples, count), generator=generator)
            times = torch.zeros(resamples, count, dtype=torch.float64).scatter_add_(
                1, picks, torch.ones(resamples, count, dtype=torch.float64))  # how often each image is drawn
            per_class = torch.cat([block.sum(1, keepdim=True), block @ times.T], dim=1)  # (vectors, resamples + 1)
            sums += per_class[:, :, None] * groups[:, c, None, :]
        start += count
    return sums


def request_h(before: torch.Tensor, after: torch.Tensor, *, images: tuple[int, int]
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """One request's H on each resample from the correct images of its forget and retain classes before and after
    it ((resamples + 1, 2) each; ``images``: how many of each set there are), and its figures without resampling
    (``h_mean``, ``acc_f``, ``acc_r``, ``acc_f_before``, ``acc_r_before``)."""
    if 0 in images:
        raise ValueError("a request's forget or retain classes have no evaluation images: no accuracy, no H")
    acc = {"acc_f": 100.0 * after[:, 0] / images[0], "acc_r": 100.0 * after[:, 1] / images[1],
           "acc_f_before": 100.0 * before[:, 0] / images[0], "acc_r_before": 100.0 * before[:, 1] / images[1]}
    drop = (acc["acc_f_before"] - acc["acc_f"]).tolist()
    h = torch.tensor([h_mean(d, r) for d, r in zip(drop, acc["acc_r"].tolist(), strict=True)], dtype=torch.float64)
    return h, {"h_mean": float(h[0]), **{k: float(v[0]) for k, v in acc.items()}}


def same_images(records: Sequence[dict]) -> bool:
    """Whether hits records were measured on the same evaluation images (labels in the same order)."""
    return len({(json.dumps(r["class_counts"]), r.get("labels_sha256")) for r in records}) <= 1


def rows_h(rows: dict[str, Sequence[dict]], *, resamples: int, seed: int = 0
           ) -> dict[str, tuple[torch.Tensor, list[dict[str, float]]]]:
    """Per row (label -> its requests' ``hits_record``s): (resamples + 1, requests) H on the resamples that ``seed``
    draws, the same for every row and request, and each request's figures without resampling."""
    records = [record for hits in rows.values() for record in hits]
    if not same_images(records):
        raise ValueError(f"the rows {', '.join(map(repr, rows))} were measured on different evaluation images")
    counts = records[0]["class_counts"]
    sets = torch.zeros(len(records), len(counts), 2)
    for i, record in enumerate(records):
        sets[i, record["forget"], 0] = 1
        sets[i, record["retain"], 1] = 1
    vectors = torch.stack([v for record in records for v in read_hits(record)])
    sums = iter(resampled_sums(vectors, counts, sets.repeat_interleave(2, dim=0), resamples=resamples,
                               generator=torch.Generator().manual_seed(seed)))
    images = iter((sets * torch.tensor(counts, dtype=torch.float32)[None, :, None]).sum(1).int().tolist())
    out = {}
    for label, hits in rows.items():
        scored = [request_h(next(sums), next(sums), images=tuple(next(images))) for _ in hits]
        out[label] = (torch.stack([h for h, _ in scored], dim=1), [figures for _, figures in scored])
    return out


def hits_h(hits: Sequence[dict], *, resamples: int, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """``rows_h`` of one row."""
    return rows_h({"": hits}, resamples=resamples, seed=seed)[""]


def interval(values: torch.Tensor, level: float = 0.95) -> list[float]:
    """The percentile interval holding ``level`` of the values."""
    tail = (1.0 - level) / 2
    return [float(values.quantile(tail)), float(values.quantile(1.0 - tail))]


def pair(h: dict[str, torch.Tensor], a: str, b: str, *, level: float = 0.95) -> dict:
    """Rows a and b (their ``rows_h`` H, row 0 the data itself, then resamples): both mean H over the requests, the
    mean-H difference a - b, its 95% interval (``ci95``; with another ``level`` also ``ci`` at that level), the share
    of resamples with a strictly ahead, and the same per request (95%)."""
    difference = h[a] - h[b]
    mean = difference.mean(dim=1)
    return {"mean_h": {a: float(h[a][0].mean()), b: float(h[b][0].mean())}, "mean_h_difference": float(mean[0]),
            "ci95": interval(mean[1:]), **({} if level == 0.95 else {"level": level, "ci": interval(mean[1:], level)}),
            "share_a_ahead": float((mean[1:] > 0).double().mean()),
            "per_request": [{"difference": float(difference[0, i]), "ci95": interval(difference[1:, i]),
                             "share_a_ahead": float((difference[1:, i] > 0).double().mean())}
                            for i in range(difference.shape[1])]}


def has_hits(row: dict) -> bool:
    """Whether every request of a comparison row keeps its ``hits``."""
    return bool(row.get("tasks")) and all("hits" in t for t in row["tasks"])


def against_first(methods: dict[str, dict], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
                  ) -> dict[str, dict]:
    """Each row against the first row that keeps its hits (the reference; named in each entry): ``pair``. Rows
    without hits, with another number of requests or measured on other images than the reference are left out;
    empty when no row is left beside the reference."""
    rows = {label: row for label, row in methods.items() if has_hits(row)}
    if not rows:
        return {}
    reference = next(iter(rows))
    first = rows[reference]["tasks"]
    rows = {label: row for label, row in rows.items() if len(row["tasks"]) == len(first)
            and same_images([first[0]["hits"], row["tasks"][0]["hits"]])}
    if len(rows) < 2:
        return {}
    h = {label: scored[0] for label, scored in rows_h({k: [t["hits"] for t in r["tasks"]] for k, r in rows.items()},
                                                        resamples=resamples, seed=seed).items()}
    return {label: {"reference": reference, "resamples": resamples, "seed": seed, **pair(h, label, reference,
                                                                                         level=level)}
            for label in rows if label != reference}
