"""The run directory as a service: lock, stage, commit, recover, verify; the ledger behind it.

::

    run/
      ledger.sqlite                  every request and its status, artefact hashes and metrics (source of truth)
      manifest.json                  exported from the ledger after every change (read it, never write it)
      base_predictions.safetensors   the original model's test predictions (for measures against the original)
      requests/NNN/                  request NNN's files: adapter/, model/ (the merged model), ...
      report.md  metrics.json  *.png

Writers hold an exclusive ``flock`` on the run directory itself (no lock file is left behind), a new run
as well as an existing one. A request's files are written into a staging directory inside the run, moved
into ``requests/NNN`` and then committed by one ledger transaction; SIGINT/SIGTERM are held back during
the commit. Whatever kills a process, the next writer finds the ledger and the files consistent: it
removes staging directories and request directories the ledger does not list as committed, and marks a
request left ``running`` as interrupted (back to ``queued`` when it came from the queue, else
``failed``), so it can be run again. A new run appears with its ledger at the first commit; until then
the directory holds nothing but staging.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gslora.engine.ledger import LEDGER, Ledger, now
from gslora.errors import GSLoRAError, Interrupted
from gslora.io import apply_umask, atomic_write_json, make_dir, os_error, sha256_file
from gslora.report import REPORT_FILES

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BASE_PREDICTIONS = "base_predictions.safetensors"
REQUESTS = "requests"
STAGING = ".staging-"
#: what gslora writes at the top of a run directory: a directory holding only these (the original model's
#: predictions among them, the first file a first commit moves in) and no ledger is what an interrupted first
#: commit left, and may be cleaned
RUN_ENTRIES = {LEDGER, f"{LEDGER}-wal", f"{LEDGER}-shm", MANIFEST, BASE_PREDICTIONS, REQUESTS, "certificate.json",
               *REPORT_FILES}


@contextmanager
def deferred_signals(after: str | None = None) -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends (a commit must not stop half-way). A signal that arrived
    is delivered when the block ends; with ``after``, as ``Interrupted(signum, after)``: the message that says what
    the block completed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received and after is not None:
            raise Interrupted(received[0], after)
        if received:
            signal.raise_signal(received[0])


def files_with_hashes(directory: Path, prefix: str) -> dict[str, str]:
    """``{prefix/relative path: sha256}`` of every file under ``directory``."""
    return {f"{prefix}/{p.relative_to(directory)}": sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file()}


class RunDirectory:
    """A locked run directory. Get one with ``RunDirectory.lock(path, create=...)``.

    Attributes:
        path: the directory.
        ledger: the open ledger; ``None`` for a new run until its first request is committed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger: Ledger | None = None
        self._new_meta: dict[str, Any] | None = None
        self._new_base: dict[str, torch.Tensor] | None = None
        #: the id of the last request this process committed (an error raised after its commit, such as a signal
        #: held back during it, must not mark it failed)
        self.last_committed: int | None = None

    # -- opening and locking ----------------------------------------------------------------------

    @classmethod
    @contextmanager
    def lock(cls, path: str | Path, *, create: bool) -> Iterator[RunDirectory]:
        """Lock ``path`` for writing: a new run (``create``; the directory must be absent or empty) or an existing one.

        Raises:
            GSLoRAError: another process holds the run, the directory is not what ``create`` expects, or it
                cannot be created.
        """
        path = Path(path)
        made: list[Path] = []  # directories this call creates (the run and missing parents), removed if unused
        if create:
            if path.exists() and not path.is_dir():
                raise GSLoRAError(f"--out {str(path)!r} is a file; choose a directory for the new run")
            made = [p for p in [path, *path.parents] if not p.exists()]
            make_dir(path)
        elif not (path / LEDGER).is_file() and not (path / MANIFEST).is_file():
            raise GSLoRAError(f"{str(path)!r} is not a gslora run directory (no {LEDGER}); start a run with "
                              "`gslora forget --out DIR ...`")
        elif not all(os.access(p, os.W_OK) for p in (path, path / LEDGER) if p.exists()):
            raise GSLoRAError(f"run directory {str(path)!r} is read-only for this user (permission denied); ask for "
                              "write access, or copy the run and pass the copy")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise os_error(exc, path, "open") from exc
        run = cls(path)
        locked = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise GSLoRAError(f"another gslora process is writing run {str(path)!r}; wait for it to "
                                  "finish") from exc
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                same = False
            if not same:  # the directory was removed (a failed new run cleaning up) while this process waited
                raise GSLoRAError(f"{str(path)!r} was removed or replaced while this command waited for it; run the "
                                  "command again")
            locked = True
            if create:
                run._prepare_new()
            else:
                run._open_existing()
            yield run
        finally:
            if run.ledger is not None:
                run.ledger.close()
            elif create and locked:  # nothing was committed: leave no trace of the attempt
                run._remove_staging()
                for directory in made:
                    try:
                        directory.rmdir()  # only if empty
                    except OSError:
                        break
            os.close(fd)

    @staticmethod
    @contextmanager
    def read(path: str | Path) -> Iterator[Ledger]:
        """The ledger of an existing run, read-only and without the lock (readers never block a writer)."""
        path = Path(path)
        if not (path / LEDGER).is_file() and (path / MANIFEST).is_file():
            if not os.access(path, os.W_OK):
                raise GSLoRAError(f"{str(path)!r} was written by gslora < 0.2 and has no ledger yet, and this user "
                                  "cannot write it; run any gslora command on it once with write access")
            with RunDirectory.lock(path, create=False):  # builds its ledger from the manifest
                pass
        if not (path / LEDGER).is_file():
            raise GSLoRAError(f"{str(path)!r} is not a gslora run directory (no {LEDGER}); start a run with "
                              "`gslora forget --out DIR ...`")
        ledger = Ledger.open(path / LEDGER, read_only=not os.access(path, os.W_OK))
        try:
            yield ledger
        finally:
            ledger.close()

    def _prepare_new(self) -> None:
        self._remove_staging()
        entries = [e.name for e in self.path.iterdir()]
        if LEDGER in entries or MANIFEST in entries:
            raise GSLoRAError(f"run directory {str(self.path)!r} already exists; pass --run {self.path} to add "
                              "requests to it, or choose a new --out")
        leftovers = set(entries) <= RUN_ENTRIES and BASE_PREDICTIONS in entries  # moved first by a first commit
        if entries and not leftovers:
            shown = ", ".join(sorted(entries)[:3])
            raise GSLoRAError(f"{str(self.path)!r} is not empty ({shown}, ...); a new run needs an empty or new "
                              "directory: choose another --out")
        for name in entries:  # left by a first commit that was killed before its ledger landed
            log.warning("removing %s, left by an interrupted first request of this run", self.path / name)
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()

    def _open_existing(self) -> None:
        self._remove_staging()
        if not (self.path / LEDGER).is_file():
            from gslora.engine.migrate import ledger_from_manifest

            ledger_from_manifest(self.path, self._read_manifest())
        self.ledger = Ledger.open(self.path / LEDGER, upgrade=True)
        self._recover()

    def _read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GSLoRAError(f"{self.path / MANIFEST} is not valid JSON ({exc}); the run directory is "
                              "damaged") from exc
        if not isinstance(manifest, dict):
            raise GSLoRAError(f"{self.path / MANIFEST} is not a gslora manifest; the run directory is damaged")
        return manifest

    def _remove_staging(self) -> None:
        for stale in self.path.glob(f"{STAGING}*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Make the directory match the ledger after a process that held it died."""
        assert self.ledger is not None
        self._remove_staging()
        interrupted = self.ledger.rows(where="status = 'running'")
        if interrupted:
            with self.ledger.transaction() as db:
                for row in interrupted:
                    status = "queued" if row["source"] == "queue" else "failed"
                    log.warning("request %d was interrupted (the process holding the run ended); it is %s now",
                                row["id"], status)
                    self.ledger.update(db, row["id"], status=status, started=None if status == "queued" else
                                       row["started"], finished=None if status == "queued" else now(),
                                       error="interrupted: the process ended before the request was committed")
                    self.ledger.event(db, "interrupted", {"status": status}, row["id"])
        committed = {row["id"] for row in self.ledger.rows(where="status IN ('done', 'rolled_back')")}
        requests = self.path / REQUESTS
        for directory in requests.iterdir() if requests.is_dir() else []:
            if not directory.name.isdigit() or int(directory.name) not in committed:
                log.warning("removing %s: not committed to the ledger", directory)
                shutil.rmtree(directory, ignore_errors=True)
        revision = self.ledger.meta("revision")
        if interrupted or self._revision(MANIFEST) != revision or self._revision("metrics.json") != revision:
            self.export()  # the manifest or the report is older than the ledger: a process died before writing it

    def _revision(self, name: str) -> int | None:
        try:
            return json.loads((self.path / name).read_text()).get("ledger_revision")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None

    # -- state ------------------------------------------------------------------------------------

    @property
    def is_new(self) -> bool:
        return self.ledger is None

    def begin(self, meta: dict[str, Any], base_tensors: dict[str, torch.Tensor]) -> None:
        """A new run's facts (base model, data set, config, hardware) and the original model's predictions;
        written with its first commit."""
        self._new_meta, self._new_base = meta, base_tensors

    def meta(self) -> dict[str, Any]:
        return self._new_meta if self.ledger is None else self.ledger.all_meta()

    def base_tensors(self, key: str) -> dict[str, torch.Tensor]:
        """The original model's saved predictions (``key`` must be among them)."""
        if self._new_base is not None:
            return self._new_base
        path = self.path / BASE_PREDICTIONS
        try:
            base = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise GSLoRAError(f"cannot read {path} ({exc}); the run directory is damaged") from exc
        if key not in base:
            raise GSLoRAError(f"{path} lacks the original model's predictions; the run directory is damaged")
        return base

    def applied(self) -> list[dict[str, Any]]:
        return [] if self.ledger is None else self.ledger.applied()

    def forgotten(self) -> list[int]:
        """Every class the latest model has forgotten: the classes of the applied forget requests."""
        return [c for row in self.applied() if row["kind"] == "forget" for c in row["classes"]]

    def next_index(self) -> int:
        """The index of the next change in the run's sequence: after every committed one, rolled back or not, so an
        index (and the seeds drawn from it) is never used twice."""
        if self.ledger is None:
            return 0
        rows = self.ledger.rows(where="status IN ('done', 'rolled_back') AND record IS NOT NULL")
        indices = [row["record"]["index"] for row in rows if "index" in row["record"]]
        return max(indices) + 1 if indices else 0

    def latest_model(self) -> Path | None:
        """The latest model's directory (None before the first request), checked against its recorded SHA-256."""
        applied = [row for row in self.applied() if row["record"].get("checkpoint")]
        if not applied:
            return None
        record = applied[-1]["record"]
        weights = self.path / record["checkpoint"] / "model.safetensors"
        self.check_inside(weights)
        if not weights.is_file() or sha256_file(weights) != record["checkpoint_sha256"]:
            raise GSLoRAError(f"{weights} does not match the hash in the ledger; the run directory was changed outside "
                              "gslora")
        return self.path / record["checkpoint"]

    def check_inside(self, path: Path) -> None:
        """Refuse a recorded path that points outside the run directory (a tampered ledger or manifest)."""
        if not path.resolve().is_relative_to(self.path.resolve()):
            raise GSLoRAError(f"the run records the path {str(path)!r}, outside {str(self.path)!r}; the run directory "
                              "was changed outside gslora")

    # -- requests ---------------------------------------------------------------------------------

    def start(self, *, classes: list[int], class_names: list[str], method: dict[str, Any], settings: dict[str, Any],
              queued_id: int | None = None, requester: str | None = None, reason: str | None = None,
              kind: str = "forget", target: int | None = None) -> int:
        """Record that a request (or a rollback) is running; returns its id (its directory: ``requests/<id>``)."""
        if self.ledger is None:
            self._new_row = {"classes": classes, "class_names": class_names, "method": method, "settings": settings,
                             "requester": requester, "reason": reason, "received": now(), "started": now()}
            return 0
        with self.ledger.transaction() as db:
            if queued_id is not None:
                self.ledger.update(db, queued_id, status="running", started=now(), method=method, settings=settings)
                return queued_id
            return self.ledger.add(db, kind=kind, target=target, classes=classes, class_names=class_names,
                                   source="command", status="running", requester=requester, reason=reason,
                                   started=now(), method=method, settings=settings)

    @contextmanager
    def attempt(self, request_id: int) -> Iterator[Path]:
        """A staging directory for a started request (or rollback). If the block ends in an error or a signal before
        the request is committed, the ledger marks it failed (interrupted: back to queued when it came from the
        queue); the staging directory goes either way."""
        stage = self.stage()
        try:
            yield stage
        except KeyboardInterrupt:
            if self.last_committed != request_id:
                self.fail(request_id, "interrupted by a signal", interrupted=True)
            raise
        except Exception as exc:
            if self.last_committed != request_id:
                self.fail(request_id, str(exc) if isinstance(exc, GSLoRAError) else f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def stage(self) -> Path:
        """A fresh staging directory inside the run (removed by the next writer if this process dies)."""
        path = self.path / f"{STAGING}{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except OSError as exc:
            raise os_error(exc, path, "write into") from exc
        return path

    def commit(self, request_id: int, stage: Path, record: dict[str, Any], *, rolls_back: int | None = None,
               report: bool = True) -> None:
        """Move a finished request's files into ``requests/<id>`` and commit it (with ``rolls_back``, in the same
        transaction mark that request rolled back); then export the manifest, and the report unless ``report`` is
        off (a caller that commits several requests writes it once at the end; ``_recover`` writes a stale one)."""
        with deferred_signals():
            name = f"{REQUESTS}/{request_id:03d}"
            apply_umask(stage)
            artefacts = files_with_hashes(stage, name)
            record = {**record, "id": request_id, "artefacts": artefacts}
            make_dir(self.path / REQUESTS)
            if self.ledger is None:
                self._commit_first(stage, name, record)
            else:
                os.replace(stage, self.path / name)
                with self.ledger.transaction() as db:
                    self.ledger.update(db, request_id, status="done", position=self.ledger.next_position(),
                                       finished=now(), artefacts=artefacts, record=record, error=None)
                    if rolls_back is not None:
                        self.ledger.update(db, rolls_back, status="rolled_back")
                        self.ledger.event(db, "rolled_back", {"by": request_id, "exact": False}, rolls_back)
            self.last_committed = request_id
            self.export(report=report)

    def _commit_first(self, stage: Path, name: str, record: dict[str, Any]) -> None:
        """The first commit of a new run: its files, then the ledger, which makes it a run."""
        assert self._new_meta is not None and self._new_base is not None
        base = self.path / f"{STAGING}{BASE_PREDICTIONS}"
        save_file({k: v.contiguous() for k, v in self._new_base.items()}, str(base))
        apply_umask(base)
        draft = self.path / f"{STAGING}{LEDGER}"
        draft.unlink(missing_ok=True)
        row = self._new_row
        with Ledger.create(draft, {**self._new_meta, "base_predictions_sha256": sha256_file(base)}) as ledger:
            with ledger.transaction() as db:
                ledger.add(db, classes=row["classes"], class_names=row["class_names"], source="command",
                           status="done", requester=row["requester"], reason=row["reason"], received=row["received"],
                           started=row["started"], finished=now(), method=row["method"], settings=row["settings"],
                           position=0, artefacts=record["artefacts"], record=record)
        os.replace(base, self.path / BASE_PREDICTIONS)
        os.replace(stage, self.path / name)
        os.replace(draft, self.path / LEDGER)  # from here on this is a run
        self.ledger = Ledger.open(self.path / LEDGER)
        self._new_meta = self._new_base = None

    def fail(self, request_id: int, error: str, *, interrupted: bool = False) -> None:
        """Record that a request did not finish (nothing of it is committed); a no-op for a new run."""
        if self.ledger is None:
            return
        row = self.ledger.get(request_id)
        status = "queued" if interrupted and row["source"] == "queue" else "failed"
        with deferred_signals(), self.ledger.transaction() as db:
            self.ledger.update(db, request_id, status=status, finished=None if status == "queued" else now(),
                               started=None if status == "queued" else row["started"], error=error)
            self.ledger.event(db, "interrupted" if interrupted else "failed", {"error": error}, request_id)
        self.export()

    # -- export -----------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """The run as one JSON document (what ``manifest.json`` holds)."""
        assert self.ledger is not None
        return manifest_from(self.ledger)

    def export(self, *, report: bool = True) -> None:
        """Rewrite ``manifest.json`` and (``report``) the report from the ledger."""
        from gslora.report import write_report

        manifest = self.manifest()
        atomic_write_json(self.path / MANIFEST, manifest)
        if report:
            write_report(manifest, self.path)


def manifest_from(ledger: Ledger) -> dict[str, Any]:
    meta = ledger.all_meta()
    applied = ledger.applied()
    records = [row["record"] for row in applied]
    with_model = [r for r in records if r.get("checkpoint")]
    config = dict(meta.get("config", {}))
    if "sequence" in config:
        config["sequence"] = {**config["sequence"], "requests": [row["class_names"] for row in applied
                                                                  if row["kind"] == "forget"]}
    return {
        "gslora_version": meta.get("gslora_version"), "task": meta.get("task", "classification"),
        "created": meta.get("created"), "ledger_revision": meta["revision"], "base": meta.get("base"),
        "dataset": meta.get("dataset"), "base_metrics": meta.get("base_metrics"), "config": config,
        "hardware": meta.get("hardware"),
        "code_version": meta.get("code_version"), "requests": records,
        "latest_checkpoint": with_model[-1]["checkpoint"] if with_model else None,
        "ledger": [{k: row[k] for k in ("id", "kind", "class_names", "requester", "reason", "source", "received",
                                        "started", "finished", "status", "target", "error")}
                   for row in ledger.rows()],
        "events": ledger.events(),
        "verification": ledger.verifications(),
    }
