"""Class order, erasure-request sequences and the per-request training subsets."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gslora.config import SequenceConfig
from gslora.data.datasets import Dataset
from gslora.errors import GSLoRAError


@dataclass(frozen=True)
class Request:
    """One erasure request and the class sets it is measured on.

    Attributes:
        index: position in the run's sequence (0-based).
        forget: class ids to forget now.
        retain: class ids still to be recognised after this request.
        old: class ids forgotten by earlier requests.
        missing: retained class ids without training data (a subset of ``retain``).
    """

    index: int
    forget: tuple[int, ...]
    retain: tuple[int, ...]
    old: tuple[int, ...]
    missing: tuple[int, ...] = ()


def class_order(num_classes: int, seed: int) -> list[int]:
    """The reference's seeded order: ``random.seed(seed); random.shuffle(range(n))``."""
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    return order


def resolve_classes(tokens: Sequence[str | int], classes: Sequence[str]) -> list[int]:
    """Turn class names or ids into ids; names match case-insensitively.

    Raises:
        GSLoRAError: a token is neither a class name nor a valid id, or a class is named twice.
    """
    by_name = {name.lower(): i for i, name in enumerate(classes)}
    ids = []
    for token in tokens:
        text = str(token).strip()
        if text.lower() in by_name:
            ids.append(by_name[text.lower()])
        elif re.fullmatch(r"[0-9]+", text) and int(text) < len(classes):  # ASCII digits only: int() of "²" fails
            ids.append(int(text))
        else:
            shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
            raise GSLoRAError(f"unknown class {token!r}; use a name ({shown}) or an id in 0..{len(classes) - 1}")
    if len(set(ids)) != len(ids):
        raise GSLoRAError(f"classes {list(tokens)} name the same class twice")
    return ids


def build_requests(config: SequenceConfig, classes: Sequence[str], *,
                   forgotten: Sequence[int] = (), start_index: int = 0) -> list[Request]:
    """The requests of ``config``, applied after the classes in ``forgotten`` are already gone.

    Explicit ``config.requests`` are used as given; otherwise the reference protocol: the last
    ``classes_per_request`` classes of the seeded order that are still known, request after request.

    Raises:
        GSLoRAError: a class is unknown, already forgotten, repeated, or nothing would be retained.
    """
    gone = list(forgotten)
    missing = tuple(c for c in class_order(len(classes), config.order_seed) if c not in gone)[:config.missing_classes]
    if config.requests:
        groups = [resolve_classes(r, classes) for r in config.requests]
    else:
        order = [c for c in class_order(len(classes), config.order_seed) if c not in gone]
        k = config.classes_per_request
        if k * config.num_requests >= len(order):
            raise GSLoRAError(f"{config.num_requests} requests of {k} classes would forget all {len(order)} known "
                              "classes; lower sequence.num_requests or sequence.classes_per_request")
        groups = [order[len(order) - k * (t + 1): len(order) - k * t] for t in range(config.num_requests)]
    requests = []
    for t, group in enumerate(groups):
        again = [classes[c] for c in group if c in gone]
        if again:
            raise GSLoRAError(f"class(es) {', '.join(again)} were already forgotten in this run; a class can be "
                              "forgotten only once")
        retain = tuple(c for c in range(len(classes)) if c not in gone and c not in group)
        if not retain:
            raise GSLoRAError(f"request {start_index + t} would leave no class to retain; keep at least one class")
        if set(group) & set(missing):
            raise GSLoRAError(f"request {start_index + t} forgets class(es) that sequence.missing_classes keeps "
                              "without data; lower missing_classes or forget other classes")
        if not set(retain) - set(missing):
            raise GSLoRAError(f"request {start_index + t}: every retained class is a missing class; lower "
                              "sequence.missing_classes")
        requests.append(Request(start_index + t, tuple(group), retain, tuple(gone), missing))
        gone.extend(group)
    return requests


def sample_per_class(labels: torch.Tensor, class_ids: Sequence[int], *, ratio: float = 1.0,
                     shots: int | None = None, seed: int = 0, min_per_class: int = 1) -> torch.Tensor:
    """Indices of a seeded per-class sample: ``shots`` images per class, or ``ratio`` of each class.

    With ``ratio`` each class keeps ``max(min_per_class, round(ratio * n_c))`` images (all it has if fewer).
    A class with fewer than ``shots`` images keeps all it has.
    """
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in class_ids:
        members = torch.nonzero(labels == c).flatten()
        if len(members) == 0:
            continue
        n = shots if shots is not None else max(1, min_per_class, round(ratio * len(members)))
        n = min(n, len(members))
        picked.append(members[torch.randperm(len(members), generator=generator)[:n]])
    if not picked:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(picked)).values


@dataclass(frozen=True)
class RequestData:
    """Training subsets of one request (indices into the training split)."""

    forget_indices: torch.Tensor
    retain_indices: torch.Tensor


def _draw(dataset: Dataset, request: Request, config: SequenceConfig, classes: Sequence[int], part: int
          ) -> torch.Tensor:
    """The request's seeded per-class sample of ``classes``; ``part`` (0 forget, 1 retain, 2 old) offsets the seed."""
    return sample_per_class(dataset.train.labels, classes, seed=config.subset_seed + 1000 * request.index + part,
                            ratio=config.ratio, shots=config.shots, min_per_class=config.min_per_class)


def old_indices(dataset: Dataset, request: Request, config: SequenceConfig) -> torch.Tensor:
    """The classes forgotten by earlier requests, drawn as the request's forget subset is (GS-LoRA's ``hold_old``)."""
    return _draw(dataset, request, config, request.old, 2)


def request_data(dataset: Dataset, request: Request, config: SequenceConfig) -> RequestData:
    """Draw the request's forget and retain training subsets.

    Raises:
        GSLoRAError: the forget or the retain subset holds no image.
    """
    forget = _draw(dataset, request, config, request.forget, 0)
    retain = _draw(dataset, request, config, [c for c in request.retain if c not in request.missing], 1)
    names = ", ".join(dataset.classes[c] for c in request.forget)
    if len(forget) == 0:
        raise GSLoRAError(f"request {request.index}: the forget classes ({names}) have no training images; "
                          "forgetting needs at least one image of each class to forget")
    if len(retain) == 0:
        raise GSLoRAError(f"request {request.index}: the retained classes have no training images; add training "
                          "images of the classes to keep")
    tested = set(dataset.test.labels.unique().tolist())
    untested = [dataset.classes[c] for c in (*request.forget, *request.retain) if c not in tested]
    if untested:
        raise GSLoRAError(f"request {request.index}: class(es) {', '.join(untested[:5])} have no test images, so "
                          "forgetting and retention cannot be measured; add test images of every class")
    return RequestData(forget, retain)
