"""Pre-training a detector and continual forgetting on it, with the classification run directory.

A detection run directory has the same layout and guarantees as a classification one (manifest,
``requests/NNN/{adapter,model}``, report, lock, atomic commits); its metrics are mAP instead of accuracy
and ``base_predictions.safetensors`` holds the original model's per-class AP.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gslora.config import SequenceConfig, TrainConfig, from_dict, to_dict
from gslora.data import Request, build_requests
from gslora.detection.data import (
    DetectionDataConfig,
    DetectionDataset,
    DetectionSet,
    images_with,
    load_detection_dataset,
)
from gslora.detection.gs_lora import DETECTION_METHODS
from gslora.detection.metrics import detect, detection_metrics, group_map, per_class_ap
from gslora.detection.model import Detector, DetectorConfig, build_detector, load_detector, save_detector
from gslora.engine.continual import (
    _commit,
    _now,
    _run_lock,
    _RunState,
    _staging_dir,
    load_base_predictions,
    new_manifest,
    read_manifest,
    refuse_existing_run,
    verify_latest,
)
from gslora.engine.loop import (
    ProgressFactory,
    index_batches,
    no_progress,
    optimise,
    resolve_device,
    train_epochs,
)
from gslora.errors import GSLoRAError

log = logging.getLogger(__name__)


def _targets(split: DetectionSet, idx) -> list[dict[str, torch.Tensor]]:
    return [{"labels": split.labels[int(i)], "boxes": split.boxes[int(i)]} for i in idx]


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


@dataclass
class DetectionForgetConfig:
    """A detection forgetting run: as ``ForgetConfig`` with a detection data set and method.

    ``sequence.ratio`` / ``sequence.shots``: the forget subset is that share (or ``shots`` per forget
    class) of the training images holding a forget-class object; the retain subset the same share of
    the images holding a retained-class object (``shots`` per retained class), see ``request_subsets``.
    """

    checkpoint: str = ""
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "gs_lora"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.method, dict) or "name" not in self.method:
            raise GSLoRAError("method must be a mapping with a 'name' (gs_lora or gs_lora_pp)")
        if self.sequence.missing_classes:
            raise GSLoRAError("sequence.missing_classes is not supported for detection; drop --missing-classes")
        build_detection_method(self.method)


def build_detection_method(spec: dict[str, Any]):
    cls = DETECTION_METHODS.get(spec["name"])
    return cls(from_dict(cls.config_class, {k: v for k, v in spec.items() if k != "name"}, "method"))


def _sample(pool: list[int], n_classes: int, sequence: SequenceConfig, seed: int) -> list[int]:
    n = min(len(pool), sequence.shots * n_classes) if sequence.shots else max(1, round(sequence.ratio * len(pool)))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(pool[int(i)] for i in order)


def request_subsets(dataset: DetectionDataset, request: Request, sequence: SequenceConfig
                    ) -> tuple[DetectionSet, DetectionSet]:
    """(forget subset, retain subset) of one request.

    Forget images hold a forget-class object and keep only those objects. Retain images hold a retained
    object and no forget-class one, and keep only their retained objects: objects of classes forgotten
    by earlier requests are background now, so the retention loss keeps them undetected.
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
    return dataset.train.subset(f).keep_classes(forget), dataset.train.subset(r).keep_classes(retain)


def train_detection_request(method, forget: DetectionSet, retain: DetectionSet, config: TrainConfig, *,
                            request_index: int, device: torch.device,
                            progress: ProgressFactory = no_progress) -> list[dict[str, float]]:
    """One epoch = one pass over the retain subset; each step pairs it with the next cycled forget batch."""
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
                    epoch_batches=epoch_batches, desc=f"request {request_index}", progress=progress)


def _ap_tensors(ap: dict[str, list[float | None]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([math.nan if v is None else v for v in values]) for k, values in ap.items()}


def _ap_lists(tensors: dict[str, torch.Tensor]) -> dict[str, list[float | None]]:
    return {k: [None if math.isnan(v) else v for v in t.tolist()] for k, t in tensors.items()}


def run_detection_forgetting(config: DetectionForgetConfig, run_dir: str | Path, *, resume: bool = False,
                             progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Apply the requests of ``config`` to a detector; returns the run's manifest (see ``run_forgetting``)."""
    run_dir = Path(run_dir)
    device = resolve_device(config.train.device)
    with _run_lock(run_dir, resume):
        state = _resume(run_dir, config) if resume else _new(run_dir, config)
        requests = build_requests(config.sequence, state.dataset.classes, forgotten=state.forgotten,
                                  start_index=len(state.manifest["requests"]))
        subsets = [request_subsets(state.dataset, r, config.sequence) for r in requests]  # validate all first
        model = state.model.to(device)
        before = evaluate_detector(model, state.dataset.test, state.dataset.num_classes, device=device,
                                   batch_size=config.eval_batch_size)
        if state.base_predictions is None:
            state.base_predictions = _ap_tensors(before)
        for request, (forget, retain) in zip(requests, subsets):
            model, before = _apply(state, config, request, forget, retain, model, before, device, progress)
    return state.manifest


def _new(run_dir: Path, config: DetectionForgetConfig) -> _RunState:
    refuse_existing_run(run_dir)
    if not config.checkpoint:
        raise GSLoRAError("no base detector: set checkpoint (a directory written by `gslora pretrain --task "
                          "detection`)")
    model, meta = load_detector(config.checkpoint)
    dataset = load_detection_dataset(config.data)
    if meta.get("classes") != dataset.classes:
        raise GSLoRAError(f"detector {config.checkpoint!r} was trained on classes {meta.get('classes', [])[:5]} but "
                          f"the data set has {dataset.classes[:5]}; use the data set it was trained on")
    manifest = new_manifest(config.checkpoint, Path(config.checkpoint) / "model.safetensors", {
        "name": dataset.name, "classes": dataset.classes, "train_images": len(dataset.train),
        "test_images": len(dataset.test)}, to_dict(config), task="detection")
    return _RunState(run_dir, manifest, model, dataset, [], True)


def _resume(run_dir: Path, config: DetectionForgetConfig) -> _RunState:
    manifest = read_manifest(run_dir)
    if manifest.get("task") != "detection":
        raise GSLoRAError(f"{str(run_dir)!r} is a classification run; use `gslora forget` without a detector")
    dataset = load_detection_dataset(config.data)
    if dataset.classes != manifest["dataset"]["classes"] or len(dataset.test) != manifest["dataset"]["test_images"]:
        raise GSLoRAError(f"the data set is not the one run {str(run_dir)!r} was measured on; pass the run's data")
    latest = verify_latest(run_dir, manifest)
    model, _ = load_detector(latest or manifest["base"]["checkpoint"])
    forgotten = [c for r in manifest["requests"] for c in r["forget_classes"]]
    return _RunState(run_dir, manifest, model, dataset, forgotten, False, load_base_predictions(run_dir, "ap50"))


def _apply(state: _RunState, config: DetectionForgetConfig, request: Request, forget: DetectionSet,
           retain: DetectionSet, model: Detector, before: dict[str, list], device: torch.device,
           progress: ProgressFactory):
    dataset: DetectionDataset = state.dataset
    names = [dataset.classes[c] for c in request.forget]
    log.info("request %d: forgetting %s (%d forget / %d retain training images)", request.index, ", ".join(names),
             len(forget), len(retain))
    method = build_detection_method(config.method)
    torch.manual_seed(config.train.seed + request.index)
    started, start = _now(), time.perf_counter()
    method.setup_task(model, request.index)
    history = train_detection_request(method, forget, retain, config.train, request_index=request.index,
                                      device=device, progress=progress)
    stage = _staging_dir(state)
    try:
        artifacts = method.save_artifacts(stage)
        edited = method.end_task(None)
        seconds = time.perf_counter() - start
        digest = save_detector(edited.cpu(), stage / "model", classes=dataset.classes,
                               extra={"run_request": request.index})
        edited = edited.to(device)
        after = evaluate_detector(edited, dataset.test, dataset.num_classes, device=device,
                                  batch_size=config.eval_batch_size)
        metrics = detection_metrics(after, before, forget=request.forget, retain=request.retain, old=request.old)
        original = _ap_lists(state.base_predictions)
        metrics["map50_f_original"] = detection_metrics(after, original, forget=request.forget,
                                                        retain=request.retain, old=request.old)["map50_f_before"]
        metrics["ap50_per_class"] = after["ap50"]
        prefix = f"requests/{request.index:03d}"
        record = {
            "index": request.index, "forget_classes": list(request.forget), "forget_class_names": names,
            "retain_classes": list(request.retain), "old_classes": list(request.old), "missing_classes": [],
            "started": started, "seconds": seconds,
            "train_images": {"forget": len(forget), "retain": len(retain)},
            "method": copy.deepcopy(config.method), "train": to_dict(config.train),
            **{k: f"{prefix}/{v}" for k, v in artifacts.items()},
            "checkpoint": f"{prefix}/model", "checkpoint_sha256": digest, "metrics": metrics,
            **method.diagnostics(), "history": history,
        }
        _commit(state, stage, request.index, record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    state.forgotten.extend(request.forget)
    log.info("request %d done in %.1fs: mAP50_f %.2f -> %.2f, mAP50_r %.2f -> %.2f", request.index, seconds,
             metrics["map50_f_before"], metrics["map50_f"], metrics["map50_r_before"], metrics["map50_r"])
    return edited, after
