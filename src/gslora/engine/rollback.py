"""Rollback: undo the latest request exactly, or an earlier one approximately.

The latest request is undone exactly: the run's latest model becomes the one before it again (its file is untouched
and checked byte for byte against the SHA-256 the ledger recorded), and the request is marked ``rolled_back``.

An earlier request N cannot be undone exactly, since later requests were trained on top of it. Its merged edit,
``W_N - W_{N-1}`` (for GS-LoRA: ``scaling * B A`` of its adapter), is subtracted from the latest weights; the result
is a new model, recorded as a ``rollback`` row, measured, and every remaining request is verified again. This is an
approximation: later edits interacted with N's, and the report says so.
"""

from __future__ import annotations

import copy
import logging
import signal
import time
from pathlib import Path
from typing import Any

import torch

from gslora.data import Request
from gslora.engine.ledger import now
from gslora.engine.loop import resolve_device
from gslora.engine.rundir import RunDirectory, deferred_signals
from gslora.errors import GSLoRAError, Interrupted
from gslora.io import sha256_file
from gslora.tasks import get_task

log = logging.getLogger(__name__)


def rollback(run_dir: str | Path, *, request: int | None = None, data: dict[str, Any] | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Undo the latest request (``request`` None or the latest id) exactly, or ``request`` approximately.

    Returns ``{"exact": bool, "rolled_back": id, "checkpoint": latest model path, "sha256": its hash, ...}``.

    Raises:
        GSLoRAError: nothing to roll back, an unknown or not applied request, a restored model whose bytes no
            longer match the ledger.
    """
    from gslora.engine.continual import resume_config

    config = resume_config(run_dir, {"data": data} if data else None)
    with RunDirectory.lock(Path(run_dir), create=False) as run:
        applied = run.applied()
        forgets = [row for row in applied if row["kind"] == "forget"]
        if not applied:
            raise GSLoRAError(f"run {str(run_dir)!r} has no applied request: nothing to roll back")
        if request is None or request == applied[-1]["id"]:
            if applied[-1]["kind"] != "forget":
                raise GSLoRAError("the latest change is itself an approximate rollback; roll back a request, or start "
                                  "again from an earlier model")
            return _exact(run, applied)
        target = next((row for row in forgets if row["id"] == request), None)
        if target is None:
            raise GSLoRAError(f"request {request} is not an applied request of {str(run_dir)!r}; applied: "
                              f"{[row['id'] for row in forgets]} (see `gslora requests list`)")
        return _approximate(run, config, applied, target, resolve_device(device))


def _model_before(run: RunDirectory, applied: list[dict[str, Any]], row: dict[str, Any]) -> tuple[Path, str]:
    """The model directory (and its recorded weights hash) the run had just before ``row`` was applied."""
    earlier = [r for r in applied[: applied.index(row)] if r["record"].get("checkpoint")]
    if earlier:
        record = earlier[-1]["record"]
        return _inside(run, record["checkpoint"]), record["checkpoint_sha256"]
    base = run.meta()["base"]
    return Path(base["checkpoint"]), base["sha256"]


def _inside(run: RunDirectory, relative: str) -> Path:
    """A model directory the ledger records, refused when it points outside the run."""
    path = run.path / relative
    run.check_inside(path)
    return path


def _check_bytes(model_dir: Path, sha256: str) -> None:
    weights = model_dir / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != sha256:
        raise GSLoRAError(f"{weights} does not match the SHA-256 the ledger recorded; it cannot be restored byte for "
                          "byte (was it changed or moved?)")


def _exact(run: RunDirectory, applied: list[dict[str, Any]]) -> dict[str, Any]:
    latest = applied[-1]
    restored, sha = _model_before(run, applied, latest)
    _check_bytes(restored, sha)
    assert run.ledger is not None
    done = f"interrupted after the rollback was recorded: the latest model is {restored} again"
    with deferred_signals(after=done), run.ledger.transaction() as db:
        run.ledger.update(db, latest["id"], status="rolled_back")
        rollback_id = run.ledger.add(db, kind="rollback", target=latest["id"], classes=latest["classes"],
                                     class_names=latest["class_names"], source="command", status="done", started=now(),
                                     finished=now(), record={"kind": "rollback", "exact": True,
                                                             "target": latest["id"], "restored": str(restored),
                                                             "restored_sha256": sha})
        run.ledger.event(db, "rolled_back", {"by": rollback_id, "exact": True, "restored_sha256": sha}, latest["id"])
    with deferred_signals(after=done):
        run.export()
    log.info("rolled back request %d: the latest model is %s again", latest["id"], restored)
    return {"exact": True, "rolled_back": latest["id"], "checkpoint": str(restored), "sha256": sha}


def _approximate(run: RunDirectory, config: Any, applied: list[dict[str, Any]], target: dict[str, Any],
                 device: torch.device) -> dict[str, Any]:
    task = get_task(config.task)
    meta = run.meta()
    dataset = task.load_data(config)
    task.check_same_data(dataset, meta["dataset"], run.path)
    latest_dir = run.latest_model()
    before_dir, before_sha = _model_before(run, applied, target)
    _check_bytes(before_dir, before_sha)
    target_dir = _inside(run, target["record"]["checkpoint"])
    _check_bytes(target_dir, target["record"]["checkpoint_sha256"])
    latest, _ = task.load_model(latest_dir)
    edited, _ = task.load_model(target_dir)
    previous, _ = task.load_model(before_dir)
    start = time.perf_counter()
    undone = _subtract(latest, edited, previous)
    restored = list(target["classes"])
    forgotten = [c for c in run.forgotten() if c not in restored]
    retained = [c for c in range(dataset.num_classes) if c not in forgotten and c not in restored]
    names = [dataset.classes[c] for c in restored]
    request_id = run.start(classes=restored, class_names=names, method={"name": "rollback"}, settings={},
                           kind="rollback", target=target["id"])
    with run.attempt(request_id) as stage:
        digest = task.save_model(undone.cpu(), stage / "model", classes=dataset.classes,
                                 extra={"rollback_of": target["id"]})
        before_eval = task.evaluate(latest.to(device), dataset, config, device=device)
        after_eval = task.evaluate(undone.to(device), dataset, config, device=device)
        index = run.next_index()
        metrics = task.measure(dataset, Request(index, tuple(restored), tuple(retained), tuple(forgotten)), before_eval,
                               after_eval, run.base_tensors(task.base_key), config)
        record = {"index": index, "kind": "rollback", "exact": False, "approximation": True,
                  "target": target["id"], "target_index": target["record"]["index"], "forget_classes": [],
                  "restored_classes": restored, "forget_class_names": [f"rollback of {', '.join(names)}"],
                  "retain_classes": retained, "old_classes": forgotten, "missing_classes": [],
                  "started": now(), "seconds": time.perf_counter() - start, "method": {"name": "rollback"},
                  "checkpoint": f"requests/{request_id:03d}/model", "checkpoint_sha256": digest,
                  "metrics": metrics}
        run.commit(request_id, stage, record, rolls_back=target["id"])
    verify = getattr(config, "verify", None)
    if verify is not None and verify.enabled:
        from gslora.engine.verify import verify_latest

        original, _ = task.load_model(meta["base"]["checkpoint"])
        try:
            verify_latest(run, task, dataset, undone.to(device), verify, device=device, original=original.to(device))
        except Interrupted:
            raise
        except KeyboardInterrupt as exc:
            raise Interrupted(getattr(exc, "signum", signal.SIGINT),
                              f"interrupted; the rollback of request {target['id']} is committed, its verification "
                              "did not finish: run `gslora verify --run RUN`") from None
    return {"exact": False, "rolled_back": target["id"], "checkpoint": str(run.path / record["checkpoint"]),
            "sha256": digest, "metrics": metrics, "scores": task.scores(metrics)}


@torch.no_grad()
def _subtract(latest: torch.nn.Module, edited: torch.nn.Module, previous: torch.nn.Module) -> torch.nn.Module:
    """A new model: ``latest - (edited - previous)`` for every floating-point tensor (others kept from latest)."""
    a, b, c = latest.state_dict(), edited.state_dict(), previous.state_dict()
    undone = copy.deepcopy(latest)
    undone.load_state_dict({k: (v - (b[k] - c[k])) if v.is_floating_point() else v for k, v in a.items()})
    return undone
