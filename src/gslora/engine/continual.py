"""Continual forgetting: apply erasure requests one after another and keep a run directory.

A run directory holds::

    manifest.json                  base checkpoint hash, configs, every request (classes, time,
                                   adapter, merged checkpoint and its hash, metrics)
    base_predictions.safetensors   the original model's test predictions (for dAcc_f vs the original)
    requests/NNN/adapter/          the request's LoRA adapter in peft format
    requests/NNN/model/            the merged model after the request (a gslora checkpoint)
    metrics.json, report.md, accuracy.png, group_norms.png

Everything is validated before anything is written; each request is committed atomically (its files
first, then the manifest), so an error leaves the run as it was after the last finished request.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gslora.config import DataConfig, SequenceConfig, TrainConfig, from_dict, require, to_dict
from gslora.data import Dataset, Request, build_requests, load_dataset, request_data, sample_per_class
from gslora.engine.evaluate import Predictions, predict
from gslora.engine.loop import ProgressFactory, no_progress, resolve_device, train_request
from gslora.errors import GSLoRAError
from gslora.io import atomic_directory, atomic_write_json, sha256_file
from gslora.methods import METHODS, Method, TaskContext
from gslora.metrics import accuracy, request_metrics, verification
from gslora.models import VisionClassifier, load_checkpoint, read_checkpoint_meta, save_checkpoint
from gslora.version import __version__

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BASE_PREDICTIONS = "base_predictions.safetensors"
LOCK = ".lock"


@dataclass
class ForgetConfig:
    """Everything a forgetting run needs.

    Args:
        checkpoint: the base model: a gslora checkpoint directory (``gslora pretrain`` writes one).
        data: the data set (its classes must be the checkpoint's).
        sequence: the requests and their per-request training subsets.
        method: ``name`` of a registered method plus its hyper-parameters.
        train: optimisation settings of each request.
        eval_batch_size: batch size of evaluation.
        verification: report face verification (TAR at ``fars``) from embedding cosine similarity;
            ``None`` turns it on for margin (face) heads.
        fars: false-accept rates of the verification report.
        verification_images: at most this many test images (balanced per class) form the pairs.
    """

    checkpoint: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "gs_lora"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int = 512
    verification: bool | None = None
    fars: list[float] = field(default_factory=lambda: [0.01, 0.001])
    verification_images: int = 2000

    def __post_init__(self) -> None:
        require(all(0 < f < 1 for f in self.fars), "fars", self.fars, "each FAR must be in (0, 1)")
        if not isinstance(self.method, dict) or "name" not in self.method:
            raise GSLoRAError("method must be a mapping with a 'name' (for example {name: gs_lora})")
        build_method(self.method)  # validates the name and the hyper-parameters now


def build_method(spec: dict[str, Any]) -> Method:
    """Instantiate the registered method ``spec["name"]`` with the other keys as its config."""
    cls = METHODS.get(spec["name"])
    return cls(from_dict(cls.config_class, {k: v for k, v in spec.items() if k != "name"}, "method"))


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}, torch {torch.__version__}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_classes(dataset: Dataset, meta: dict[str, Any], checkpoint: str) -> None:
    classes = meta.get("classes")
    num_classes = meta.get("model", {}).get("num_classes")
    if num_classes != dataset.num_classes or (classes and list(classes) != dataset.classes):
        shown = classes[:5] if classes else ""
        raise GSLoRAError(f"checkpoint {checkpoint!r} was trained on {num_classes} classes {shown} but data set "
                          f"{dataset.name!r} has {dataset.num_classes} classes {dataset.classes[:5]}; use the data set "
                          "the model was trained on")


@dataclass
class _RunState:
    run_dir: Path
    manifest: dict[str, Any]
    model: VisionClassifier
    dataset: Dataset
    forgotten: list[int]
    is_new: bool
    base_predictions: dict[str, torch.Tensor] | None = None  # the original model's top1 (and margin_top1)
    base_model: VisionClassifier | None = None


def _labels_digest(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()


def refuse_existing_run(run_dir: Path) -> None:
    """A new run needs an empty or absent directory."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise GSLoRAError(f"run directory {str(run_dir)!r} already exists; pass --run {run_dir} to add requests to "
                          "it, or choose a new --out")


def new_manifest(checkpoint: str, weights: Path, dataset: dict[str, Any], config: dict[str, Any],
                 **extra: Any) -> dict[str, Any]:
    """The manifest of a new run: base checkpoint and its hash, data set, config (requests are recorded one by
    one), hardware; ``extra`` adds keys such as ``task``."""
    config["sequence"]["requests"] = []
    return {"gslora_version": __version__, **extra, "created": _now(),
            "base": {"checkpoint": str(Path(checkpoint).resolve()), "sha256": sha256_file(weights)},
            "dataset": dataset, "config": config, "hardware": hardware(), "requests": [], "latest_checkpoint": None}


def verify_latest(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    """The run's latest model directory (None before the first request), checked against the manifest's hash."""
    latest = manifest["latest_checkpoint"]
    if not latest:
        return None
    weights, _ = read_checkpoint_meta(run_dir / latest)
    if sha256_file(weights) != manifest["requests"][-1]["checkpoint_sha256"]:
        raise GSLoRAError(f"{weights} does not match the hash in the manifest; the run directory was changed "
                          "outside gslora")
    return run_dir / latest


def load_base_predictions(run_dir: Path, key: str) -> dict[str, torch.Tensor]:
    """The original model's saved predictions (``key`` must be among them)."""
    try:
        base = load_file(str(run_dir / BASE_PREDICTIONS))
    except (OSError, SafetensorError) as exc:
        raise GSLoRAError(f"cannot read {run_dir / BASE_PREDICTIONS} ({exc}); the run directory is damaged") from exc
    if key not in base:
        raise GSLoRAError(f"{run_dir / BASE_PREDICTIONS} lacks the original model's predictions; the run directory "
                          "is damaged")
    return base


def _new_state(config: ForgetConfig, run_dir: Path) -> _RunState:
    refuse_existing_run(run_dir)
    if not config.checkpoint:
        raise GSLoRAError("no base model: set checkpoint (a directory written by `gslora pretrain`)")
    weights, meta = read_checkpoint_meta(config.checkpoint)
    dataset = load_dataset(config.data)
    _check_classes(dataset, meta, config.checkpoint)
    model, _ = load_checkpoint(config.checkpoint)
    manifest = new_manifest(config.checkpoint, weights, {
        "name": dataset.name, "classes": dataset.classes, "train_images": len(dataset.train),
        "test_images": len(dataset.test), "test_labels_sha256": _labels_digest(dataset.test.labels)}, to_dict(config))
    return _RunState(run_dir, manifest, model, dataset, [], True)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise GSLoRAError(f"{str(run_dir)!r} is not a gslora run directory (no {MANIFEST}); start a run with "
                          "`gslora forget --out DIR ...`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GSLoRAError(f"{path} is not valid JSON ({exc}); the run directory is damaged") from exc


def _resume_state(run_dir: Path, config: ForgetConfig) -> _RunState:
    manifest = read_manifest(run_dir)
    dataset = load_dataset(config.data)
    recorded = manifest["dataset"]
    if dataset.classes != recorded["classes"] or len(dataset.test) != recorded["test_images"] or \
            _labels_digest(dataset.test.labels) != recorded.get("test_labels_sha256"):
        raise GSLoRAError(f"data set {dataset.name!r} is not the one run {str(run_dir)!r} was measured on (other "
                          "classes or test split); pass the run's data set")
    latest = verify_latest(run_dir, manifest)
    model, _ = load_checkpoint(latest or manifest["base"]["checkpoint"])
    base_predictions = load_base_predictions(run_dir, "top1")
    forgotten = [c for r in manifest["requests"] for c in r["forget_classes"]]
    return _RunState(run_dir, manifest, model, dataset, forgotten, False, base_predictions)


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> ForgetConfig:
    """The config a run was started with, with ``overrides`` (nested mapping) applied."""
    base = read_manifest(run_dir)["config"]
    for key, value in (overrides or {}).items():
        other_method = key == "method" and isinstance(value, dict) and \
            value.get("name", base[key]["name"]) != base[key]["name"]
        if isinstance(value, dict) and isinstance(base.get(key), dict) and not other_method:
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return from_dict(ForgetConfig, base)


@contextmanager
def _run_lock(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold an exclusive lock on an existing run, so two processes never add requests at once."""
    if not resume:
        yield
        return
    if not (run_dir / MANIFEST).is_file():
        read_manifest(run_dir)  # raises the "not a run directory" error
    with open(run_dir / LOCK, "a") as handle:  # created with the run; "a" leaves it untouched
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise GSLoRAError(f"another gslora process is adding requests to {str(run_dir)!r}; wait for it to "
                              "finish") from exc
        for stale in run_dir.glob(".staging-*"):  # left by a killed process; never part of the run
            shutil.rmtree(stale, ignore_errors=True)
        yield


def run_forgetting(config: ForgetConfig, run_dir: str | Path, *, resume: bool = False,
                   progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Apply the requests of ``config`` and return the run's manifest.

    Args:
        config: model, data, requests, method and training settings.
        run_dir: the run directory; a new one unless ``resume``.
        resume: add the requests to the run in ``run_dir``, on top of its latest model.
        progress: progress-bar factory (the CLI passes tqdm); silent by default.

    Raises:
        GSLoRAError: bad input (unknown or already forgotten class, empty subset, checkpoint that
            does not fit, unreadable data, non-finite loss); nothing is written for the failed request.
    """
    run_dir = Path(run_dir)
    device = resolve_device(config.train.device)
    with _run_lock(run_dir, resume):
        state = _resume_state(run_dir, config) if resume else _new_state(config, run_dir)
        requests = build_requests(config.sequence, state.dataset.classes, forgotten=state.forgotten,
                                  start_index=len(state.manifest["requests"]))
        subsets = [request_data(state.dataset, r, config.sequence) for r in requests]  # validate all first
        model = state.model.to(device)
        predictions = _predict(model, state, config, device)
        if state.base_predictions is None:
            state.base_model = state.model
            state.base_predictions = {"top1": predictions.top1}
            if predictions.margin_top1 is not None:
                state.base_predictions["margin_top1"] = predictions.margin_top1
        for request, subset in zip(requests, subsets):
            model, predictions = _apply_request(state, config, request, subset, model, predictions, device,
                                                progress)
    return state.manifest


def _wants_verification(config: ForgetConfig, model: VisionClassifier) -> bool:
    return model.has_margin if config.verification is None else config.verification


def _predict(model: VisionClassifier, state: _RunState, config: ForgetConfig, device: torch.device) -> Predictions:
    return predict(model, state.dataset.test, device=device, batch_size=config.eval_batch_size,
                   embeddings=_wants_verification(config, model))


def _original_model_loader(state: _RunState) -> Callable[[], VisionClassifier]:
    def load() -> VisionClassifier:
        if state.base_model is None:
            state.base_model, _ = load_checkpoint(state.manifest["base"]["checkpoint"])
        return state.base_model

    return load


def _measure(state: _RunState, config: ForgetConfig, request: Request, before: Predictions,
             after: Predictions) -> dict[str, Any]:
    """Accuracies and H of a request (plain, and margin-penalised for margin heads) and verification."""
    labels = state.dataset.test.labels

    def readings(key: str) -> dict[str, float | None]:
        now, then, original = getattr(after, key), getattr(before, key), state.base_predictions[key]
        missing = request.missing or None
        return request_metrics(
            acc_f=accuracy(now, labels, request.forget), acc_r=accuracy(now, labels, request.retain),
            acc_o=accuracy(now, labels, request.old) if request.old else None,
            acc_f_before=accuracy(then, labels, request.forget), acc_r_before=accuracy(then, labels, request.retain),
            acc_f_original=accuracy(original, labels, request.forget),
            acc_m=accuracy(now, labels, missing) if missing else None,
            acc_m_before=accuracy(then, labels, missing) if missing else None)

    metrics: dict[str, Any] = readings("top1")
    if after.margin_top1 is not None and "margin_top1" in state.base_predictions:
        metrics["margin"] = readings("margin_top1")
    if after.embeddings is not None and before.embeddings is not None:
        keep = torch.arange(len(labels))
        if len(labels) > config.verification_images:
            per_class = max(2, config.verification_images // state.dataset.num_classes)
            keep = sample_per_class(labels, range(state.dataset.num_classes), shots=per_class, seed=0)
        sets = {"forget": request.forget, "retain": request.retain}
        for suffix, preds in (("", after), ("_before", before)):
            tars = verification(preds.embeddings[keep], labels[keep], sets, fars=config.fars)
            metrics[f"tar_f{suffix}"], metrics[f"tar_r{suffix}"] = tars["forget"], tars["retain"]
    return metrics


def _staging_dir(state: _RunState) -> Path:
    if state.is_new:  # the run directory appears whole at the first commit
        parent = state.run_dir.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f".{state.run_dir.name}.staging-"))
    return Path(tempfile.mkdtemp(dir=state.run_dir, prefix=".staging-"))


def _apply_request(state: _RunState, config: ForgetConfig, request: Request, subset, model: VisionClassifier,
                   before: Predictions, device: torch.device, progress: ProgressFactory):
    dataset = state.dataset
    forget, retain = dataset.train.subset(subset.forget_indices), dataset.train.subset(subset.retain_indices)
    names = [dataset.classes[c] for c in request.forget]
    log.info("request %d: forgetting %s (%d forget / %d retain training images)", request.index, ", ".join(names),
             len(forget), len(retain))
    steps_per_epoch = -(-len(retain) // config.train.batch_size)
    task = TaskContext(request, config.train.for_steps_per_epoch(steps_per_epoch).epochs, steps_per_epoch,
                       forget_data=forget,
                       retain_data=retain, original_model=_original_model_loader(state), device=device)
    method = build_method(config.method)
    torch.manual_seed(config.train.seed + request.index)
    started, start = _now(), time.perf_counter()
    method.setup_task(model, task)
    history = train_request(method, task, forget, retain, config.train, device=device, progress=progress)
    stage = _staging_dir(state)
    try:
        artifacts = method.save_artifacts(stage)
        edited = method.end_task(task)
        seconds = time.perf_counter() - start
        digest = save_checkpoint(edited.cpu(), stage / "model", classes=dataset.classes,
                                 extra={"run_request": request.index})
        edited = edited.to(device)
        after = _predict(edited, state, config, device)
        metrics = _measure(state, config, request, before, after)
        prefix = f"requests/{request.index:03d}"
        record = {
            "index": request.index,
            "forget_classes": list(request.forget),
            "forget_class_names": names,
            "retain_classes": list(request.retain),
            "old_classes": list(request.old),
            "missing_classes": list(request.missing),
            "started": started,
            "seconds": seconds,
            "train_images": {"forget": len(forget), "retain": len(retain)},
            "method": copy.deepcopy(config.method),
            "train": to_dict(config.train),
            **{k: f"{prefix}/{v}" for k, v in artifacts.items()},
            "checkpoint": f"{prefix}/model",
            "checkpoint_sha256": digest,
            "metrics": metrics,
            **method.diagnostics(),
            "history": history,
        }
        _commit(state, stage, request.index, record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    state.forgotten.extend(request.forget)
    log.info("request %d done in %.1fs: acc_f %.2f acc_r %.2f H %.2f", request.index, seconds, metrics["acc_f"],
             metrics["acc_r"], metrics["h_mean"])
    return edited, after


def _commit(state: _RunState, stage: Path, index: int, record: dict[str, Any]) -> None:
    """Move a finished request into the run directory, then rewrite the manifest and the report."""
    from gslora.report import write_report

    manifest = state.manifest
    manifest["requests"].append(record)
    manifest["latest_checkpoint"] = record["checkpoint"]
    target_name = f"requests/{index:03d}"
    if state.is_new:
        if state.run_dir.exists() and any(state.run_dir.iterdir()):
            raise GSLoRAError(f"{str(state.run_dir)!r} was created by someone else while this request trained; "
                              "nothing was written")
        with atomic_directory(state.run_dir, replace=state.run_dir.exists()) as tmp:
            save_file({k: v.contiguous() for k, v in state.base_predictions.items()}, str(tmp / BASE_PREDICTIONS))
            (tmp / "requests").mkdir()
            (tmp / LOCK).touch()
            os.replace(stage, tmp / target_name)
            atomic_write_json(tmp / MANIFEST, manifest)
            write_report(manifest, tmp)
        state.is_new = False
        return
    target = state.run_dir / target_name
    if target.exists():  # left over by an interrupted commit: not in the manifest, so not part of the run
        shutil.rmtree(target)
    os.replace(stage, target)
    atomic_write_json(state.run_dir / MANIFEST, manifest)
    write_report(manifest, state.run_dir)
