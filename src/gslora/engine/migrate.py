"""Runs written by gslora < 0.2 kept their state in ``manifest.json`` alone; build their ledger from it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gslora.engine.ledger import LEDGER, Ledger
from gslora.errors import GSLoRAError

log = logging.getLogger(__name__)


def ledger_from_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``ledger.sqlite`` for an old run (the caller holds the run's lock)."""
    missing = [k for k in ("config", "requests", "base", "dataset") if k not in manifest]
    if missing or not isinstance(manifest.get("requests"), list):
        raise GSLoRAError(f"{run_dir / 'manifest.json'} lacks {', '.join(missing) or 'a list of requests'}; it is not "
                          "a gslora manifest and the run directory is damaged")
    meta = {k: manifest[k] for k in ("task", "created", "base", "dataset", "config", "hardware") if k in manifest}
    meta["gslora_version"] = manifest.get("gslora_version")
    meta.setdefault("task", "classification")
    draft = run_dir / f".staging-{LEDGER}"
    for leftover in (draft, draft.with_name(draft.name + "-wal"), draft.with_name(draft.name + "-shm")):
        leftover.unlink(missing_ok=True)
    with Ledger.create(draft, meta) as ledger, ledger.transaction() as db:
        for record in manifest["requests"]:
            try:
                names = record.get("forget_class_names") or [str(c) for c in record["forget_classes"]]
                ledger.add(db, classes=record["forget_classes"], class_names=names, source="command", status="done",
                           received=record.get("started"), started=record.get("started"), position=record["index"],
                           method=record.get("method"), settings={"train": record.get("train")},
                           record={**record, "id": record["index"]})
            except (KeyError, TypeError) as exc:
                raise GSLoRAError(f"{run_dir / 'manifest.json'} holds a malformed request ({exc}); the run directory "
                                  "is damaged") from exc
        ledger.event(db, "migrated", {"from": "manifest.json", "gslora_version": manifest.get("gslora_version")})
    os.replace(draft, run_dir / LEDGER)
    log.warning("%s: built the ledger from the manifest of gslora %s", run_dir, manifest.get("gslora_version"))
