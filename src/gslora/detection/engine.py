"""Pre-training a detector and continual forgetting on it, with the classification run directory.

A detection run directory has the same layout and guarantees as a classification one (manifest,
``requests/NNN/{adapter,model}``, report, lock, atomic commits); its metrics are mAP instead of accuracy
and ``base_predictions.safetensors`` holds the original model's per-class AP.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from gslora.config import AcceptanceConfig, AdaptersConfig, ForgetTrainConfig, SequenceConfig, TrainConfig, to_dict
from gslora.data import Request, resolve_classes
from gslora.detection.data import (
    DetectionDataConfig,
    DetectionDataset,
    DetectionSet,
    images_with,
    load_detection_dataset,
)
from gslora.detection.gs_lora import DetectionGSLoRA  # noqa: F401  (registers GS-LoRA(++) for detection)
from gslora.detection.metrics import detect, group_map, per_class_ap
from gslora.detection.model import Detector, DetectorConfig, build_detector, save_detector
from gslora.engine.loop import (
    Profile,
    ProgressFactory,
    index_batches,
    no_progress,
    optimise,
    resolve_device,
    train_epochs,
)
from gslora.engine.provenance import stamp
from gslora.errors import GSLoRAError
from gslora.methods import Method, build_method

log = logging.getLogger(__name__)


def _targets(split: DetectionSet, idx) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"labels", "boxes"}``, plus ``"held_labels"`` / ``"held_boxes"`` where the split set objects aside
    (the detector reads only the first two)."""
    held = split.held_labels is not None
    return [{"labels": split.labels[int(i)], "boxes": split.boxes[int(i)],
             **({"held_labels": split.held_labels[int(i)], "held_boxes": split.held_boxes[int(i)]} if held else {})}
            for i in idx]


def _to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def evaluate_detector(model: Detector, split: DetectionSet, num_classes: int, *, device: torch.device,
                      batch_size: int = 64) -> dict[str, list[float | None]]:
    """Per-class AP and AP@0.5 (percent) on ``split``."""
    return per_class_ap(detect(model, split, device=device, batch_size=batch_size), split, num_classes)


def pretrain_detector(model_config: DetectorConfig, dataset: DetectionDataset, config: TrainConfig, *,
                      progress: ProgressFactory = no_progress) -> tuple[Detector, dict[str, Any]]:
    """Train a detector on every class; returns it and {seconds, map50, map, history}."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    if model_config.num_classes != dataset.num_classes:
        model_config = dataclasses.replace(model_config, num_classes=dataset.num_classes)
    model = build_detector(model_config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    train = dataset.train
    start = time.perf_counter()
    history = train_epochs(model, params, len(train), config,
                           lambda idx, _: model(train.images[idx].to(device), _to(_targets(train, idx), device)).loss,
                           desc="pretrain detector", progress=progress)
    seconds = time.perf_counter() - start
    ap = evaluate_detector(model, dataset.test, dataset.num_classes, device=device)
    every = range(dataset.num_classes)
    info = {"seconds": seconds, "map50": group_map(ap["ap50"], every), "map": group_map(ap["ap"], every),
            "ap50_per_class": ap["ap50"],
            "history": history}
    return model.cpu(), info


#: a detector's pre-training defaults (AdamW as Deformable DETR's recipe, clipped gradients)
DETECTION_PRETRAIN_TRAIN = {"lr": 2e-4, "batch_size": 16, "max_grad_norm": 0.1, "weight_decay": 1e-4}


@dataclass
class DetectionPretrainConfig:
    """Pre-training a detector (``gslora pretrain --task detection`` and ``run_detector_pretraining``).

    Args:
        data: the detection data set; ``model.num_classes`` and ``model.image_size`` follow it.
        model: the detector's shape.
        train: optimisation, with the detector's defaults (lr 2e-4, batch 16, gradient clipping 0.1).
        exclude_classes: classes (names or ids) whose objects are not training targets: the images stay and those
            objects are background, as in a data set annotated without them; the class head keeps every class. With
            a run's forgotten classes this trains its Retrain reference (what forgetting should look like).
    """

    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    model: DetectorConfig = field(default_factory=DetectorConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**DETECTION_PRETRAIN_TRAIN))
    exclude_classes: list[str | int] = field(default_factory=list)


def run_detector_pretraining(config: DetectionPretrainConfig, out: str | Path, *, overwrite: bool = False,
                             progress: ProgressFactory = no_progress) -> tuple[str, dict[str, Any]]:
    """Pre-train a detector on ``config.data`` and write its checkpoint to ``out``; returns (SHA-256, info)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise GSLoRAError(f"{str(out)!r} already exists; pass --overwrite to replace it or choose another --out")
    dataset = load_detection_dataset(config.data)
    model_config = dataclasses.replace(config.model, num_classes=dataset.num_classes,
                                       image_size=config.data.image_size)
    excluded = resolve_classes(config.exclude_classes, dataset.classes) if config.exclude_classes else []
    if excluded:
        kept = set(range(dataset.num_classes)) - set(excluded)
        dataset = dataclasses.replace(dataset, train=dataset.train.keep_classes(kept))
        log.info("training without %s as targets (their objects are background)",
                 [dataset.classes[c] for c in excluded])
    model, info = pretrain_detector(model_config, dataset, config.train, progress=progress)
    info.pop("history")
    digest = save_detector(model, out, classes=dataset.classes, replace=out.exists(),
                           extra={"pretrain": {**info, "dataset": dataset.name, "config": to_dict(config),
                                               "excluded_classes": excluded, **stamp()}})
    return digest, info


@dataclass
class DetectionForgetConfig:
    """A detection forgetting run: as ``ForgetConfig`` with a detection data set and method.

    ``method.name`` is a registered method that supports detection (``gs_lora``, ``gs_lora_pp``).

    ``sequence.ratio`` / ``sequence.shots``: the forget subset is that share (or ``shots`` per forget
    class) of the training images holding a forget-class object; the retain subset the same share of
    the images holding a retained-class object (``shots`` per retained class), see ``request_subsets``.
    """

    task: ClassVar[str] = "detection"

    checkpoint: str = ""
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "gs_lora"})
    train: ForgetTrainConfig = field(default_factory=ForgetTrainConfig)
    eval_batch_size: int = 64
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)

    def __post_init__(self) -> None:
        self.train = ForgetTrainConfig.of(self.train)
        if self.sequence.missing_classes:
            raise GSLoRAError("sequence.missing_classes is not supported for detection; drop --missing-classes")
        if self.train.forget_group != 1:
            raise GSLoRAError(f"train.forget_group={self.train.forget_group}: a detection image holds several classes, "
                              "so forget batches cannot be grouped by class; drop train.forget_group")
        if self.train.epochs < 1:
            raise GSLoRAError(f"train.epochs={self.train.epochs}: must be >= 1 for a forgetting request")
        build_method(self.method, self.task)


def _sample(pool: list[int], n_classes: int, sequence: SequenceConfig, seed: int) -> list[int]:
    if sequence.shots:
        n = min(len(pool), sequence.shots * n_classes)
    else:
        n = min(len(pool), max(1, sequence.min_per_class * n_classes, round(sequence.ratio * len(pool))))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(pool[int(i)] for i in order)


def request_subsets(dataset: DetectionDataset, request: Request, sequence: SequenceConfig
                    ) -> tuple[DetectionSet, DetectionSet]:
    """(forget subset, retain subset) of one request.

    Forget images hold a forget-class object and keep only those objects. Retain images hold a retained
    object and keep only their retained objects as targets (a forget object beside them is dropped).
    Objects of classes forgotten by earlier requests are background now, so the retention loss keeps them
    undetected; they are also set aside as the retain subset's held objects, which ``method.hold_old``
    bounds like forget objects.
    """
    forget, retain = set(request.forget), set(request.retain)
    names = [dataset.classes[c] for c in request.forget]
    forget_pool = images_with(dataset.train, forget)
    retain_pool = images_with(dataset.train, retain)
    if not forget_pool:
        raise GSLoRAError(f"request {request.index}: no training image holds {names}; nothing to forget")
    if not retain_pool:
        raise GSLoRAError(f"request {request.index}: no training image holds only retained classes; the retention "
                          "loss needs some")
    if not images_with(dataset.test, forget):
        raise GSLoRAError(f"request {request.index}: no test image holds {names}; forgetting could not be measured")
    seed = sequence.subset_seed + request.index
    f = _sample(forget_pool, len(forget), sequence, seed)
    r = _sample(retain_pool, len(retain), sequence, seed + 7919)
    return (dataset.train.subset(f).keep_classes(forget),
            dataset.train.subset(r).keep_classes(retain, held=set(request.old)))


def train_detection_request(method: Method, forget: DetectionSet, retain: DetectionSet, config: TrainConfig, *,
                            request_index: int, device: torch.device, progress: ProgressFactory = no_progress,
                            profile: Profile | None = None, done: Callable[[], bool] | None = None
                            ) -> list[dict[str, float]]:
    """One epoch = one pass over the retain subset; each step pairs it with the next cycled forget batch; ``done()``,
    asked after each epoch, ends the request early (``train.stop_when_forgotten``)."""
    generator = torch.Generator().manual_seed(config.seed + request_index)

    def cycled():
        while True:
            yield from index_batches(len(forget), config.batch_size, generator)

    forget_indices = cycled()

    def epoch_batches():
        for idx_r in index_batches(len(retain), config.batch_size, generator):
            idx_f = next(forget_indices)
            yield ((forget.images[idx_f].to(device), _to(_targets(forget, idx_f), device)),
                   (retain.images[idx_r].to(device), _to(_targets(retain, idx_r), device)))

    return optimise(method, config, steps_per_epoch=-(-len(retain) // config.batch_size),
                    epoch_batches=epoch_batches, desc=f"request {request_index}", progress=progress, device=device,
                    profile=profile, done=done)


def run_detection_forgetting(config: DetectionForgetConfig, run_dir: str | Path, *, resume: bool = False,
                             progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """``gslora.engine.run_forgetting`` for a detector (kept for the API)."""
    from gslora.engine.continual import run_forgetting

    return run_forgetting(config, run_dir, resume=resume, progress=progress)
