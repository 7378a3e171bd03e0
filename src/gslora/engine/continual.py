"""Continual forgetting: erasure requests applied one after another, each through one pipeline.

A request goes train -> finish (merge, save) -> measure -> record -> commit, whatever the task: the task
(``gslora.tasks``: classification, detection) supplies data, model I/O, subsets, batches and metrics; the
run directory (``gslora.engine.rundir``) supplies the lock, staging, the ledger and atomic commits.
Everything is validated before anything is written; a failed or interrupted request leaves the run as it
was after the last finished one (the ledger records the attempt).
"""

from __future__ import annotations

import copy
import functools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from gslora.config import (
    AcceptanceConfig,
    AdaptersConfig,
    DataConfig,
    ForgetTrainConfig,
    SequenceConfig,
    TrainConfig,
    from_dict,
    require,
    to_dict,
)
from gslora.data import Request, build_requests
from gslora.engine import distributed
from gslora.engine.ledger import now
from gslora.engine.loop import Profile, ProgressFactory, no_progress, resolve_device
from gslora.engine.provenance import hardware
from gslora.engine.rundir import RunDirectory, deferred_signals, manifest_from
from gslora.errors import GSLoRAError, Interrupted, RequestRejected
from gslora.methods import TaskContext, build_method, resolved_spec
from gslora.tasks import Subsets, Task, get_task
from gslora.verification import VerifyConfig
from gslora.version import __version__, code_version

log = logging.getLogger(__name__)


@dataclass
class ForgetConfig:
    """Everything a forgetting run of a classifier needs.

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
        acceptance: when a finished request is committed (thresholds on forgetting and on retained accuracy).
        verify: the verification suite run after every request on every request so far (membership inference,
            linear probe, relearn time, face figures); ``verify.enabled: false`` turns it off.
        adapters: where adapters may go (``allow_non_transformer`` for MLP blocks without attention).
    """

    task: ClassVar[str] = "classification"

    checkpoint: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "gs_lora"})
    train: ForgetTrainConfig = field(default_factory=ForgetTrainConfig)
    eval_batch_size: int = 512
    verification: bool | None = None
    fars: list[float] = field(default_factory=lambda: [0.01, 0.001])
    verification_images: int = 2000
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)

    def __post_init__(self) -> None:
        self.train = ForgetTrainConfig.of(self.train)
        require(all(0 < f < 1 for f in self.fars), "fars", self.fars, "each FAR must be in (0, 1)")
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        require(self.train.epochs >= 1, "train.epochs", self.train.epochs, "must be >= 1 for a forgetting request")
        build_method(self.method, self.task)  # validates the name and the hyper-parameters now


@dataclass
class _State:
    """What a run's requests need besides the run directory."""

    task: Task
    dataset: Any
    model: torch.nn.Module
    forgotten: list[int]
    base: dict[str, torch.Tensor] | None
    original: Callable[[], torch.nn.Module]


def run_forgetting(config: Any, run_dir: str | Path, *, resume: bool = False, pending: bool = False,
                   requester: str | None = None, reason: str | None = None,
                   progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Apply the requests of ``config`` and return the run's manifest.

    Args:
        config: a ``ForgetConfig`` (classifiers) or ``DetectionForgetConfig`` (detectors).
        run_dir: the run directory; a new one unless ``resume``.
        resume: add the requests to the run in ``run_dir``, on top of its latest model.
        pending: run the run's queued requests (``gslora requests add``) in order instead of ``config.sequence``'s.
        requester, reason: recorded in the ledger with each request.
        progress: progress-bar factory (the CLI passes tqdm); silent by default.

    Raises:
        GSLoRAError: bad input (unknown or already forgotten class, empty subset, checkpoint that does not
            fit, unreadable data, non-finite loss); nothing is committed for the failed request.
        Interrupted: SIGINT/SIGTERM; the run is as it was after its last committed request.
    """
    task = get_task(config.task)
    device = resolve_device(config.train.device)
    with RunDirectory.lock(Path(run_dir), create=not resume) as run:
        state = _resume(task, config, run) if resume else _new(task, config, run)
        queued = run.ledger.rows(where="status = 'queued'") if pending and run.ledger else []
        if pending and not queued:
            raise GSLoRAError(f"run {str(run_dir)!r} has no queued requests; add some with `gslora requests add`")
        sequence = config.sequence
        if pending:
            sequence = SequenceConfig(**{**to_dict(config.sequence), "requests": [row["classes"] for row in queued]})
        requests = build_requests(sequence, state.dataset.classes, forgotten=state.forgotten,
                                  start_index=run.next_index())
        if not pending:
            _refuse_queued(run, requests, state.dataset.classes)
        subsets = [task.subsets(state.dataset, r, sequence) for r in requests]  # validate all before training
        for request, subset in zip(requests, subsets):
            _warn_about_data(request, subset, sequence, config.train)
        model = state.model.to(device)
        before = task.evaluate(model, state.dataset, config, device=device)
        if state.base is None:
            state.base = task.base_tensors(before)
            run.begin({**_run_meta(task, config, state), "base_metrics": task.overall(before, state.dataset)},
                      state.base)
        try:
            for i, (request, subset) in enumerate(zip(requests, subsets)):
                row = queued[i] if pending else {}
                model, before = _apply_request(run, state, config, request, subset, model, before, device, progress,
                                               queued_id=row.get("id"), requester=row.get("requester", requester),
                                               reason=row.get("reason", reason))
                verify = getattr(config, "verify", None)
                if verify is not None and verify.enabled:
                    _verify_after(run, state, model, verify, device)
        finally:
            if run.last_committed is not None:  # the report, once for every request this call committed
                with deferred_signals():
                    run.export()
        return run.manifest()


def _verify_after(run: RunDirectory, state: _State, model: torch.nn.Module, config: VerifyConfig,
                  device: torch.device) -> None:
    """The verification suite on the new latest model, for every request so far (the request itself is committed:
    an interruption here leaves it so, and `gslora verify` measures it later)."""
    from gslora.engine.verify import verify_latest

    try:
        verify_latest(run, state.task, state.dataset, model, config, device=device,
                      original=state.original().to(device), report=False)
    except Interrupted:
        raise  # it says what was recorded
    except KeyboardInterrupt as exc:
        latest = run.applied()[-1]["record"]["index"]
        raise Interrupted(getattr(exc, "signum", signal.SIGINT),
                          f"interrupted; the run {str(run.path)!r} is as it was after request {latest}, whose "
                          "verification did not finish: run `gslora verify --run RUN`") from None


#: below these a request is unlikely to forget: said before training, with the numbers and the flags to change
FEW_IMAGES, FEW_STEPS = 4, 50


def _warn_about_data(request: Request, subsets: Subsets, sequence: SequenceConfig, train: TrainConfig) -> None:
    """Say before training when a request gets less data than asked for, or too little to forget."""
    few = {name: n for name, n in subsets.forget_per_class.items() if n < FEW_IMAGES}
    if few:
        shown = ", ".join(f"{name}: {n}" for name, n in list(few.items())[:5])
        log.warning("request %d: only %s training image(s) of the class(es) to forget (%s); forgetting needs a few: "
                    "raise --ratio or --shots, or add images", request.index, min(few.values()), shown)
    steps = train.for_steps_per_epoch(-(-len(subsets.retain) // train.batch_size)).epochs * \
        -(-len(subsets.retain) // train.batch_size)
    if steps < FEW_STEPS:
        log.warning("request %d: only %d optimisation steps (%d retained images in batches of %d); raise --epochs or "
                    "train.min_steps (--set train.min_steps=200)", request.index, steps, len(subsets.retain),
                    train.batch_size)
    if subsets.short:
        shown = ", ".join(f"{name}: {n}" for name, n in list(subsets.short.items())[:5])
        log.warning("request %d: --shots %d asks for more training images than %d class(es) have; they use all they "
                    "have (%s%s); recorded as shots_short in the ledger", request.index, sequence.shots,
                    len(subsets.short), shown, ", ..." if len(subsets.short) > 5 else "")


def _refuse_queued(run: RunDirectory, requests: list[Request], classes: list[str]) -> None:
    if run.ledger is None:
        return
    for row in run.ledger.rows(where="status = 'queued'"):
        clash = [classes[c] for r in requests for c in r.forget if c in row["classes"]]
        if clash:
            raise GSLoRAError(f"{', '.join(clash)} is queued as request {row['id']} of this run; run the queue with "
                              "`gslora forget --run RUN --pending`")


def _new(task: Task, config: Any, run: RunDirectory) -> _State:
    if not config.checkpoint:
        raise GSLoRAError("no base model: set checkpoint (a directory written by `gslora pretrain`)")
    _, meta = task.read_meta(config.checkpoint)
    dataset = task.load_data(config)
    task.check_model(dataset, meta, config.checkpoint)
    model, _ = task.load_model(config.checkpoint)
    return _State(task, dataset, model, [], None, lambda: model)


def _resume(task: Task, config: Any, run: RunDirectory) -> _State:
    meta = run.meta()
    if meta.get("task", "classification") != task.name:
        raise GSLoRAError(f"{str(run.path)!r} is a {meta.get('task')} run; pass a {meta.get('task')} config")
    dataset = task.load_data(config)
    task.check_same_data(dataset, meta["dataset"], run.path)
    latest = run.latest_model()
    model, _ = task.load_model(latest or meta["base"]["checkpoint"])
    forgotten = run.forgotten()
    cache: dict[str, torch.nn.Module] = {}

    def original() -> torch.nn.Module:
        if "model" not in cache:
            cache["model"] = task.load_model(meta["base"]["checkpoint"])[0]
        return cache["model"]

    return _State(task, dataset, model, forgotten, run.base_tensors(task.base_key), original)


def _run_meta(task: Task, config: Any, state: _State) -> dict[str, Any]:
    weights, _ = task.read_meta(config.checkpoint)
    from gslora.io import sha256_file

    recorded = to_dict(config)
    recorded["method"] = resolved_spec(build_method(config.method, task.name), config.method["name"])
    if config.sequence.requests:
        for unused in ("num_requests", "classes_per_request"):
            recorded["sequence"].pop(unused, None)
    return {"gslora_version": __version__, "code_version": code_version(), "task": task.name, "created": now(),
            "base": {"checkpoint": str(Path(config.checkpoint).resolve()), "sha256": sha256_file(weights)},
            "dataset": task.data_record(state.dataset), "config": recorded, "hardware": hardware()}


def _apply_request(run: RunDirectory, state: _State, config: Any, request: Request, subsets: Subsets,
                   model: torch.nn.Module, before: Any, device: torch.device, progress: ProgressFactory, *,
                   queued_id: int | None, requester: str | None, reason: str | None) -> tuple[torch.nn.Module, Any]:
    task, dataset = state.task, state.dataset
    names = [dataset.classes[c] for c in request.forget]
    method = build_method(config.method, task.name)
    spec = resolved_spec(method, config.method["name"])
    steps_per_epoch = -(-len(subsets.retain) // config.train.batch_size)
    train = config.train.for_steps_per_epoch(steps_per_epoch)
    settings = {"train": to_dict(train), "steps": train.epochs * steps_per_epoch, "processes": distributed.world_size(),
                "sequence": {k: v for k, v in to_dict(config.sequence).items()
                             if k in ("ratio", "min_per_class", "shots", "subset_seed", "missing_classes")}}
    request_id = run.start(classes=list(request.forget), class_names=names, method=spec, settings=settings,
                           queued_id=queued_id, requester=requester, reason=reason)
    log.info("request %d: forgetting %s (%d forget / %d retain training images)", request.index, ", ".join(names),
             len(subsets.forget), len(subsets.retain))
    try:
        with run.attempt(request_id) as stage:
            adapters = getattr(config, "adapters", None)
            context = TaskContext(request, train.epochs, steps_per_epoch, forget_data=subsets.forget,
                                  retain_data=subsets.retain,
                                  old_data=functools.partial(task.old_subset, dataset, request, config.sequence),
                                  original_model=state.original, device=device,
                                  allow_non_transformer=bool(adapters and adapters.allow_non_transformer))
            torch.manual_seed(config.train.seed + request.index)
            started, start = now(), time.perf_counter()
            method.setup_task(model, context)
            profile = Profile(device)
            history = task.train(method, context, subsets, config.train, device=device, progress=progress,
                                 profile=profile)
            with profile.phase("merge"):
                artifacts = method.save_artifacts(stage)
                edited = method.end_task(context)
            seconds = time.perf_counter() - start
            with profile.phase("save"):
                digest = task.save_model(edited.cpu(), stage / "model", classes=dataset.classes,
                                         extra={"run_request": request.index})
            edited = edited.to(device)
            with profile.phase("evaluate"):
                after = task.evaluate(edited, dataset, config, device=device)
            metrics = task.measure(dataset, request, before, after, state.base, config)
            metrics["forget_train_score"] = task.training_forget_score(edited, subsets, request, device=device)
            verdict = judge(task.scores(metrics), metrics["forget_train_score"], config.acceptance)
            if verdict["misses"] and not config.acceptance.accept_partial:
                raise RequestRejected(f"request {request.index} ({', '.join(names)}) was not committed: "
                                      f"{'; '.join(verdict['misses'])}; the run is as it was. Train longer or harder "
                                      "(--epochs, --lr, --beta) or pass --accept-partial to commit it anyway")
            prefix = f"requests/{request_id:03d}"
            record = {
                "index": request.index, "kind": "forget", "forget_classes": list(request.forget),
                "forget_class_names": names, "retain_classes": list(request.retain),
                "old_classes": list(request.old), "missing_classes": list(request.missing), "requester": requester,
                "reason": reason, "started": started, "seconds": seconds, "train_images": subsets.sizes,
                "forget_images_per_class": subsets.forget_per_class, "shots_short": subsets.short, "method": spec,
                **settings, **{k: f"{prefix}/{v}" for k, v in artifacts.items()}, "checkpoint": f"{prefix}/model",
                "checkpoint_sha256": digest, "metrics": metrics, "acceptance": verdict, **method.diagnostics(),
                "history": history, "profile": {k: round(v, 3) for k, v in profile.seconds.items()},
            }
            run.commit(request_id, stage, record, report=False)  # run_forgetting writes the report at the end
    except KeyboardInterrupt as exc:
        applied = run.applied()
        where = (f"as it was after request {applied[-1]['record']['index']}" if applied else
                 "not created (no request finished)" if run.ledger is None else "as it was (no request applied)")
        raise Interrupted(getattr(exc, "signum", signal.SIGINT), f"interrupted; the run {str(run.path)!r} is {where}"
                          ) from None
    state.forgotten.extend(request.forget)
    scores = task.scores(metrics)
    log.info("request %d done in %.1fs: forget %.2f -> %.2f, retain %.2f -> %.2f", request.index, seconds,
             scores["forget_before"], scores["forget"], scores["retain_before"], scores["retain"])
    return edited, after


def judge(scores: dict[str, float | None], forget_train: float | None, acceptance: AcceptanceConfig) -> dict[str, Any]:
    """The thresholds a finished request misses (``misses``, one phrase each), and whether it is committed anyway."""
    misses = []
    if acceptance.max_forget is not None and forget_train is not None and forget_train > acceptance.max_forget:
        misses.append(f"the forget classes still score {forget_train:.1f}% on their training images (at most "
                      f"{acceptance.max_forget:g} is accepted: acceptance.max_forget)")
    before, after = scores["retain_before"], scores["retain"]
    if acceptance.max_retain_drop is not None and before is not None and after is not None \
            and before - after > acceptance.max_retain_drop:
        misses.append(f"retained classes fell from {before:.1f} to {after:.1f} (at most "
                      f"{acceptance.max_retain_drop:g} points is accepted: acceptance.max_retain_drop)")
    return {"misses": misses, "forget_train_score": forget_train, "accepted_partial": bool(misses),
            "thresholds": to_dict(acceptance)}


# -- reading runs -----------------------------------------------------------------------------------

def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The run as one document, exported from its ledger (a run of gslora < 0.2 gets its ledger first)."""
    with RunDirectory.read(run_dir) as ledger:
        return manifest_from(ledger)


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The config a run was started with (without its past requests), with ``overrides`` (nested mapping) applied."""
    manifest = read_manifest(run_dir)
    base = copy.deepcopy(manifest["config"])
    if not isinstance(base.get("sequence"), dict) or not isinstance(base.get("method"), dict):
        raise GSLoRAError(f"the config recorded in {str(run_dir)!r} lacks sequence or method; the run directory is "
                          "damaged")
    base["sequence"]["requests"] = []
    if isinstance(base.get("acceptance"), dict):
        base["acceptance"]["accept_partial"] = False  # committing a partial request is decided per request
    for key, value in (overrides or {}).items():
        other_method = key == "method" and isinstance(value, dict) and \
            value.get("name", base[key]["name"]) != base[key]["name"]
        if isinstance(value, dict) and isinstance(base.get(key), dict) and not other_method:
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return from_dict(get_task(manifest.get("task", "classification")).config_class, base)
