"""The request queue of a run: erasure requests recorded now, processed later in order
(``gslora requests add`` / ``gslora forget --run R --pending``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gslora.data import resolve_classes
from gslora.engine.rundir import RunDirectory, deferred_signals
from gslora.errors import GSLoRAError


def queue_request(run_dir: str | Path, classes: list[str | int], *, requester: str | None = None,
                  reason: str | None = None) -> int:
    """Record an erasure request of ``classes`` as ``queued`` in the run's ledger; returns its id.

    Raises:
        GSLoRAError: an unknown class, or one already forgotten by this run or already queued.
    """
    if not classes:
        raise GSLoRAError("name the classes to forget, for example --classes Bag,Trouser")
    with RunDirectory.lock(Path(run_dir), create=False) as run:
        assert run.ledger is not None
        names = run.meta()["dataset"]["classes"]
        ids = resolve_classes(classes, names)
        gone = set(run.forgotten())
        queued = {c: row["id"] for row in run.ledger.rows(where="status = 'queued'") for c in row["classes"]}
        for c in ids:
            if c in gone:
                raise GSLoRAError(f"class {names[c]} was already forgotten in this run; a class can be forgotten only "
                                  "once")
            if c in queued:
                raise GSLoRAError(f"class {names[c]} is already queued as request {queued[c]}")
        if len(ids) + len(gone) + len(queued) >= len(names):
            raise GSLoRAError("this request would leave no class to retain once the queue has run; keep at least one")
        with deferred_signals(after="interrupted after the request was queued: it is in the ledger"):
            with run.ledger.transaction() as db:
                request_id = run.ledger.add(db, classes=ids, class_names=[names[c] for c in ids], source="queue",
                                            status="queued", requester=requester, reason=reason)
                run.ledger.event(db, "queued", {"classes": [names[c] for c in ids]}, request_id)
            run.export()
        return request_id


def list_requests(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every request of the run (queued, running, done, failed, rolled back), oldest first, without records."""
    with RunDirectory.read(run_dir) as ledger:
        return [{k: v for k, v in row.items() if k != "record"} for row in ledger.rows()]


def show_request(run_dir: str | Path, request_id: int) -> dict[str, Any]:
    """One request's ledger row, with its record (metrics, artefacts and their hashes, history)."""
    with RunDirectory.read(run_dir) as ledger:
        return ledger.get(request_id)
