"""Verification of a run: the suite of ``gslora.verification`` on the run's latest model, for every request so far,
stored in the ledger; optionally next to a reference model retrained without the forgotten classes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from gslora.config import to_dict
from gslora.engine.loop import resolve_device
from gslora.engine.provenance import device_description
from gslora.engine.rundir import RunDirectory, deferred_signals
from gslora.errors import GSLoRAError
from gslora.tasks import Task, get_task
from gslora.verification import VerifyConfig, compare

log = logging.getLogger(__name__)


def groups_of(run: RunDirectory, only: int | None = None) -> tuple[dict[str, list[int]], dict[str, float], list[int]]:
    """(request id -> forgotten classes, request id -> Acc_f before it, every forgotten class) of the applied
    requests; ``only`` keeps one request."""
    rows = [row for row in run.applied() if row["kind"] == "forget"]
    if only is not None:
        if only not in [row["id"] for row in rows]:
            raise GSLoRAError(f"request {only} is not an applied request of {str(run.path)!r}; applied: "
                              f"{[row['id'] for row in rows] or 'none'} (see `gslora requests list`)")
    forgotten = run.forgotten()
    rows = [row for row in rows if only is None or row["id"] == only]
    groups = {str(row["id"]): list(row["classes"]) for row in rows}
    before = {str(row["id"]): row["record"]["metrics"].get("acc_f_before", row["record"]["metrics"].get(
        "map50_f_before")) for row in rows}
    return groups, before, forgotten


def measure(task: Task, model: torch.nn.Module, dataset: Any, groups: dict[str, list[int]], retained: list[int],
            config: VerifyConfig, *, device: torch.device, acc_before: dict[str, float] | None,
            original: torch.nn.Module | None, reference: tuple[str, torch.nn.Module] | None = None,
            measured: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The suite on ``model`` and, when given, on ``reference`` (name, model), with the differences; None where the
    task has no suite. ``measured``: the suite's figures already recorded for ``model`` (only the reference is
    measured)."""
    results = measured if measured is not None else task.verify(
        model, dataset, groups, retained, config, device=device, acc_before=acc_before or {}, original=original)
    if results is None:
        return None
    ref = None
    if reference is not None:
        name, ref_model = reference
        ref_results = task.verify(ref_model, dataset, groups, retained, config, device=device,
                                  acc_before=acc_before or {}, original=original)
        ref = {"checkpoint": name, "results": ref_results, "versus": compare(results, ref_results)}
    return {"results": results, "reference": ref}


def verify_latest(run: RunDirectory, task: Task, dataset: Any, model: torch.nn.Module, config: VerifyConfig, *,
                  device: torch.device, original: torch.nn.Module | None, only: int | None = None,
                  reference: tuple[str, torch.nn.Module] | None = None, report: bool = True) -> dict[str, Any] | None:
    """Run the suite on the run's latest ``model`` (and on ``reference``), record it in the ledger, export the
    manifest (and the report, with ``report``)."""
    assert run.ledger is not None
    groups, before, forgotten = groups_of(run, only)
    if not groups:
        return None
    retained = [c for c in range(dataset.num_classes) if c not in forgotten]
    applied = [row for row in run.applied() if row["record"].get("checkpoint")]
    latest = applied[-1] if applied else None
    measured, on = None, device_description(device)
    if reference is not None and latest is not None:  # the reference is what is new: `forget` just measured the model
        measured = recorded(run, latest["record"]["checkpoint_sha256"], config, groups, on)
    out = measure(task, model, dataset, groups, retained, config, device=device, acc_before=before,
                  original=original, reference=reference, measured=measured)
    if out is None:
        return None
    results, ref = out["results"], out["reference"]
    with deferred_signals(after="interrupted after the verification was recorded in the ledger"):
        with run.ledger.transaction() as db:
            run.ledger.add_verification(db, after_request=latest["id"] if latest else None,
                                        model_sha256=latest["record"]["checkpoint_sha256"] if latest else None,
                                        config=to_dict(config), results=results, device=on, reference=ref)
        run.export(report=report)
    return {"results": results, "reference": ref}


def recorded(run: RunDirectory, model_sha256: str, config: VerifyConfig, groups: dict[str, list[int]], device: str
             ) -> dict[str, Any] | None:
    """The suite's figures the ledger already holds for this model (by sha256), these settings, these requests'
    classes and this ``device`` (``device_description``; the latest such verification), or None. The suite is seeded:
    measuring the same bytes again on the same device repeats it (another device may differ in the last bits)."""
    assert run.ledger is not None
    settings = json.loads(json.dumps(to_dict(config)))  # as the ledger stores them
    for row in reversed(run.ledger.verifications()):
        if row["model_sha256"] == model_sha256 and row["config"] == settings and row["device"] == device and \
                {name: figures["classes"] for name, figures in row["results"].items()} == groups:
            log.info("the suite on the latest model is verification %d's (%s: the same model, settings, requests and "
                     "device); measuring the reference only", row["id"], row["time"])
            return row["results"]
    return None


def verify_run(run_dir: str | Path, *, data: dict[str, Any] | None = None, request: int | None = None,
               reference: str | None = None, config: VerifyConfig | None = None,
               device: str = "auto") -> dict[str, Any]:
    """``gslora verify``: the suite on a run's latest model for every request (or ``request``), recorded in its
    ledger; with ``reference`` (a checkpoint retrained without the run's forgotten classes) every figure is also
    reported for it and as the difference.

    Raises:
        GSLoRAError: not a run, a run without requests, a task without verification, a reference that does not fit.
    """
    from gslora.engine.continual import resume_config

    overrides = {"data": data} if data else {}
    run_config = resume_config(run_dir, overrides)
    task = get_task(run_config.task)
    config = config or getattr(run_config, "verify", None) or VerifyConfig()
    torch_device = resolve_device(device)
    with RunDirectory.lock(Path(run_dir), create=False) as run:
        meta = run.meta()
        dataset = task.load_data(run_config)
        task.check_same_data(dataset, meta["dataset"], run.path)
        latest = run.latest_model()
        if latest is None:
            raise GSLoRAError(f"run {str(run_dir)!r} has no committed request to verify")
        model, _ = task.load_model(latest)
        original, _ = task.load_model(meta["base"]["checkpoint"])
        ref = None
        if reference:
            _, ref_meta = task.read_meta(reference)
            task.check_model(dataset, ref_meta, reference)
            ref = (str(reference), task.load_model(reference)[0].to(torch_device))
        out = verify_latest(run, task, dataset, model.to(torch_device), config, device=torch_device,
                            original=original.to(torch_device), only=request, reference=ref)
    if out is None:
        raise GSLoRAError(f"{task.name} runs have no verification suite yet; it measures classifiers")
    return out
