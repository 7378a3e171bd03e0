"""Run ``gslora`` in a process of its own with a fault injected at one point of a request (used by test_faults.py,
through ``forked``).

POINT is where the process signals itself:
    training      at the third optimiser step
    after_adapter after the request's adapter is written to staging, before the model is saved
    saving        half-way through writing the merged model's weights
    before_ledger after the request's files moved into requests/NNN, before the ledger commits them (a new
                  run: before its ledger file is moved into place)
    before_export after the ledger committed the request, before manifest.json and the report are rewritten
SIGNAL is KILL, INT, TERM or STOP (the process stops until SIGCONT). Nothing in gslora is changed for this: the
runner wraps library functions.
"""

from __future__ import annotations

import os
import signal
import sys


def _fire(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def install(point: str, sig: str) -> None:
    import gslora.engine.loop as loop
    import gslora.engine.rundir as rundir
    import gslora.methods.gs_lora as gs_lora
    import gslora.models.checkpoint as checkpoint
    from gslora.engine.ledger import Ledger

    if point == "training":
        original_step, calls = loop.optimizer_step, []

        def step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                _fire(sig)
            return original_step(*args, **kwargs)

        loop.optimizer_step = step
    elif point == "after_adapter":
        original_save = gs_lora.GSLoRA.save_artifacts

        def save_artifacts(self, directory):
            out = original_save(self, directory)
            _fire(sig)
            return out

        gs_lora.GSLoRA.save_artifacts = save_artifacts
    elif point == "saving":
        original_file = checkpoint.save_file

        def save_file(tensors, filename, metadata=None):
            half = dict(list(tensors.items())[: len(tensors) // 2])
            original_file(half, filename, metadata=metadata)
            _fire(sig)
            return original_file(tensors, filename, metadata=metadata)

        checkpoint.save_file = save_file
    elif point == "before_ledger":
        original_update = Ledger.update

        def update(self, db, request_id, **fields):
            if fields.get("status") == "done":
                _fire(sig)
            return original_update(self, db, request_id, **fields)

        Ledger.update = update
        original_replace = os.replace

        def replace(src, dst):  # a new run's first commit: its files are in place, its ledger not yet
            if str(dst).endswith("ledger.sqlite"):
                _fire(sig)
            return original_replace(src, dst)

        os.replace = replace
    elif point == "before_export":
        original_export = rundir.RunDirectory.export

        def export(self, **kwargs):
            _fire(sig)
            return original_export(self, **kwargs)

        rundir.RunDirectory.export = export
    else:
        raise SystemExit(f"unknown fault point {point!r}")


#: what a process of ``forked`` finds imported: the command line and the libraries a request loads (torch, timm,
#: peft with transformers, scikit-learn: about 8 s of a new interpreter's start on 2 cores), imported once per test
#: worker by multiprocessing's fork server; imports only, no computation, so that each fork starts from a clean state
PRELOAD = ["gslora.cli", "gslora.engine", "gslora.tasks.classification", "gslora.verification", "timm", "peft",
           "sklearn.linear_model"]


def forked(argv: list[str], fault: tuple[str, str] | None, stdout: str, stderr: str, cwd: str) -> None:
    """``gslora argv`` (with ``fault`` installed) in a process forked from the fork server, as ``python -m
    gslora.cli`` would run it there: its own pid and signals, stdout and stderr in the two files, the exit code
    of ``main`` as the process's."""
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    if fault:
        install(*fault)
    from gslora.cli import main as gslora_main

    sys.exit(gslora_main(argv))
