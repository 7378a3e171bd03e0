"""The erasure ledger: an SQLite file in the run directory, the single source of truth of a run.

Each erasure request is one row: who asked and why, which classes, when it was received, started and
finished, its status (``queued``, ``running``, ``done``, ``failed``, ``rolled_back``), the method and
settings it ran with, the SHA-256 of every file it wrote and every metric. Rollbacks are rows too
(``kind = rollback``). ``manifest.json`` is exported from the ledger after each change.

Every state change is one transaction (WAL journal, synchronous FULL), so a process killed at any
moment leaves either the state before or the state after it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gslora.errors import GSLoRAError

LEDGER = "ledger.sqlite"
SCHEMA_VERSION = 2  #: 2: verifications record the device that measured them
STATUSES = ("queued", "running", "done", "failed", "rolled_back")
KINDS = ("forget", "rollback")

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN {KINDS}),
    position INTEGER,
    classes TEXT NOT NULL,
    class_names TEXT NOT NULL,
    requester TEXT,
    reason TEXT,
    source TEXT NOT NULL CHECK (source IN ('command', 'queue')),
    received TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    target INTEGER,
    method TEXT,
    settings TEXT,
    artefacts TEXT,
    record TEXT,
    error TEXT
);
CREATE TABLE verifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    after_request INTEGER,
    model_sha256 TEXT,
    reference TEXT,
    config TEXT NOT NULL,
    results TEXT NOT NULL,
    device TEXT
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id INTEGER,
    detail TEXT NOT NULL
);
"""

_JSON_COLUMNS = ("classes", "class_names", "method", "settings", "artefacts", "record")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """One run's ledger. Open it with ``Ledger.create`` (a new file) or ``Ledger.open``."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any]) -> Ledger:
        """A new ledger at ``path`` (which must not exist) holding the run's ``meta``."""
        path = Path(path)
        if path.exists():
            raise GSLoRAError(f"{path} exists already; a run has one ledger")
        ledger = cls(_connect(path), path)
        ledger._db.executescript(_SCHEMA)  # executescript commits by itself, so it stays outside the transaction
        with ledger.transaction() as db:
            db.execute("INSERT INTO meta VALUES ('revision', '0')")
            for key, value in {"schema_version": SCHEMA_VERSION, **meta}.items():
                db.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        return ledger

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, upgrade: bool = False) -> Ledger:
        """The ledger at ``path``; ``upgrade`` (for a writer holding the run's lock) brings an older schema to this
        gslora's in one transaction. Readers read every schema up to this gslora's.

        Raises:
            GSLoRAError: the file is missing, not a gslora ledger, or written by a newer gslora.
        """
        path = Path(path)
        if not path.is_file():
            raise GSLoRAError(f"{path} does not exist; the run directory is not a gslora run")
        try:
            ledger = cls(_connect(path, read_only=read_only), path)
            version = ledger.meta("schema_version")
        except (sqlite3.DatabaseError, KeyError, json.JSONDecodeError) as exc:
            raise GSLoRAError(f"{path} is not a gslora ledger ({exc}); the run directory is damaged") from exc
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            ledger.close()
            raise GSLoRAError(f"{path} was written by a newer gslora (ledger schema {version}, this gslora reads up to "
                              f"{SCHEMA_VERSION}); upgrade gslora to use this run")
        if upgrade and version < SCHEMA_VERSION:
            with ledger.transaction() as db:
                db.execute("ALTER TABLE verifications ADD COLUMN device TEXT")  # schema 1 -> 2
                ledger.set_meta(db, "schema_version", SCHEMA_VERSION)
                ledger.event(db, "migrated", {"ledger_schema": [version, SCHEMA_VERSION]})
        return ledger

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change; the run's revision counter goes up with it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- meta -------------------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def all_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def set_meta(self, db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                   (key, json.dumps(value)))

    # -- requests ---------------------------------------------------------------------------------

    def next_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM requests").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def add(self, db: sqlite3.Connection, *, kind: str = "forget", classes: list[int], class_names: list[str],
            source: str, status: str, requester: str | None = None, reason: str | None = None,
            target: int | None = None, received: str | None = None, **fields: Any) -> int:
        """Insert a request row inside transaction ``db``; returns its id (ids are never reused)."""
        request_id = self.next_id()
        row = {"id": request_id, "kind": kind, "classes": classes, "class_names": class_names, "source": source,
               "status": status, "requester": requester, "reason": reason, "target": target,
               "received": received or now(), **fields}
        columns = ", ".join(row)
        db.execute(f"INSERT INTO requests ({columns}) VALUES ({', '.join('?' * len(row))})",
                   [_encode(k, v) for k, v in row.items()])
        return request_id

    def update(self, db: sqlite3.Connection, request_id: int, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE requests SET {assignments} WHERE id = ?", [*(_encode(k, v) for k, v in fields.items()),
                                                                         request_id])

    def event(self, db: sqlite3.Connection, kind: str, detail: dict[str, Any], request_id: int | None = None) -> None:
        db.execute("INSERT INTO events (time, kind, request_id, detail) VALUES (?, ?, ?, ?)",
                   (now(), kind, request_id, json.dumps(detail)))

    def get(self, request_id: int) -> dict[str, Any]:
        rows = self.rows(where="id = ?", params=(request_id,))
        if not rows:
            ids = [r["id"] for r in self.rows()]
            raise GSLoRAError(f"the run has no request {request_id}; its requests are {ids or 'none yet'}")
        return rows[0]

    def rows(self, *, where: str = "1", params: tuple = (), order: str = "id") -> list[dict[str, Any]]:
        cursor = self._db.execute(f"SELECT * FROM requests WHERE {where} ORDER BY {order}", params)
        names = [d[0] for d in cursor.description]
        return [{k: _decode(k, v) for k, v in zip(names, row)} for row in cursor.fetchall()]

    def applied(self) -> list[dict[str, Any]]:
        """The requests that make the run's latest model, in order: done and not rolled back."""
        return self.rows(where="status = 'done' AND position IS NOT NULL", order="position")

    def next_position(self) -> int:
        """The place of the next state in the run's sequence of models (after every state so far, rolled back or
        not)."""
        row = self._db.execute("SELECT MAX(position) FROM requests").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def add_verification(self, db: sqlite3.Connection, *, after_request: int | None, model_sha256: str | None,
                         config: dict[str, Any], results: dict[str, Any], device: str,
                         reference: dict[str, Any] | None = None) -> int:
        cursor = db.execute("INSERT INTO verifications (time, after_request, model_sha256, reference, config, results, "
                            "device) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (now(), after_request, model_sha256, None if reference is None else json.dumps(reference),
                             json.dumps(config), json.dumps(results), device))
        return int(cursor.lastrowid)

    def verifications(self) -> list[dict[str, Any]]:
        """Every verification in order; ``device`` is None in those a schema-1 ledger (gslora before it) recorded."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(verifications)")}
        device = "device" if "device" in columns else "NULL"
        cursor = self._db.execute(f"SELECT id, time, after_request, model_sha256, reference, config, results, {device} "
                                  "FROM verifications ORDER BY id")
        return [{"id": i, "time": t, "after_request": a, "model_sha256": h, "device": d,
                 "reference": None if r is None else json.loads(r), "config": json.loads(c), "results": json.loads(x)}
                for i, t, a, h, r, c, x, d in cursor]

    def events(self) -> list[dict[str, Any]]:
        cursor = self._db.execute("SELECT id, time, kind, request_id, detail FROM events ORDER BY id")
        return [{"id": i, "time": t, "kind": k, "request_id": r, "detail": json.loads(d)} for i, t, k, r, d in cursor]


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            db.execute("SELECT 1 FROM meta LIMIT 1")
            return db
        except sqlite3.OperationalError:  # a read-only directory cannot hold WAL's shared-memory file
            return sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


def _encode(key: str, value: Any) -> Any:
    return json.dumps(value) if key in _JSON_COLUMNS and value is not None else value


def _decode(key: str, value: Any) -> Any:
    return json.loads(value) if key in _JSON_COLUMNS and value is not None else value
