"""The processed-files ledger: which result files the gateway has already turned into durable events.

One small SQLite file per equipment (beside the buffer). A row is written only after `ctx.emit()`
returned for the file's events (or after its `file_rejected` event was durable), and before the file is
moved. So after a crash:

* between emit and the ledger write: the file is read again and its events are emitted again, with the
  same message ids (`model.record_id`: a uuid5 of the result), so the buffer recognises the ids and
  suppresses the copy (nothing is sent twice; the window is one SQLite commit long);
* between the ledger write and the move: the file is recognised by its hash and only moved.

A file is recognised by its content hash (`sha256`), so a re-dropped identical file under any name emits
nothing, and a changed file with the same name is processed again. `by_identity()` (name, size, mtime) answers
for files left in place (no `archive:`) without reading them again on every scan.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["processed", "rejected", "duplicate"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    boards INTEGER NOT NULL,
    reason TEXT,
    processed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE INDEX IF NOT EXISTS files_identity ON files (name, size, mtime_ns);
"""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    name: str
    size: int
    mtime_ns: int
    sha256: str
    outcome: Outcome
    boards: int = 0
    reason: str | None = None  # why it was rejected; for a duplicate of a rejected file, that file's reason

    @property
    def rejected(self) -> bool:
        return self.reason is not None


class Ledger:
    """Durable (synchronous=FULL) record of processed files. Not thread-safe: one caller at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def by_identity(self, name: str, size: int, mtime_ns: int) -> LedgerEntry | None:
        """The latest entry for this very file (same name, size and mtime), without reading it."""
        row = self._db.execute(
            "SELECT name, size, mtime_ns, sha256, outcome, boards, reason FROM files "
            "WHERE name = ? AND size = ? AND mtime_ns = ? ORDER BY rowid DESC LIMIT 1",
            (name, size, mtime_ns),
        ).fetchone()
        return LedgerEntry(*row) if row is not None else None

    def by_hash(self, sha256: str) -> LedgerEntry | None:
        """The first entry with this content (the one that emitted its events or was rejected)."""
        row = self._db.execute(
            "SELECT name, size, mtime_ns, sha256, outcome, boards, reason FROM files "
            "WHERE sha256 = ? AND outcome != 'duplicate' ORDER BY rowid LIMIT 1",
            (sha256,),
        ).fetchone()
        return LedgerEntry(*row) if row is not None else None

    def record(self, entries: list[LedgerEntry]) -> None:
        """Commit the entries in one transaction, durably, before returning."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO files (name, size, mtime_ns, sha256, outcome, boards, reason, processed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.name, e.size, e.mtime_ns, e.sha256, e.outcome, e.boards, e.reason, now) for e in entries],
            )

    def count(self, outcome: Outcome | None = None) -> int:
        if outcome is None:
            return int(self._db.execute("SELECT count(*) FROM files").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM files WHERE outcome = ?", (outcome,)).fetchone()[0])

    def prune(self, older_than_s: float) -> int:
        """Forget entries older than this (a file re-dropped after that is processed again)."""
        cursor = self._db.execute("DELETE FROM files WHERE processed_at < ?", (time.time() - older_than_s,))
        return cursor.rowcount
