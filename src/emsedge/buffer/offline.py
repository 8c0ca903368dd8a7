"""Offline helpers for `emsedge buffer stats|export|purge`: they work on a file. `stats` and `export` only
read (safe while a gateway runs); `purge` takes the buffer's lock, so it refuses a file in use."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emsedge.buffer.errors import BufferError
from emsedge.buffer.model import EVICTION_REASONS
from emsedge.buffer.store import SeqSidecar


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise BufferError(f"no buffer file at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5.0)
    try:
        conn.execute("SELECT count(*) FROM meta").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise BufferError(f"{path} is not a readable emsedge buffer: {exc}") from exc
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def file_stats(path: str | Path) -> dict[str, Any]:
    """Counts of a buffer file (format 1 or 2): records, bytes, oldest, next_seq, losses, dead letters, and
    the own ids remembered for suppressing re-emitted copies (`ids_remembered`)."""
    conn = _open_readonly(Path(path))
    try:
        tables = _tables(conn)
        format2 = "losses" in tables
        where = " WHERE pinned = 0" if format2 else ""
        count, total, oldest_created, first_seq = conn.execute(
            f"SELECT count(*), coalesce(sum(size), 0), min(created), min(seq) FROM records{where}"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        losses: dict[str, dict[str, int]] = {}
        if format2:
            for equipment, reason, n in conn.execute("SELECT equipment, reason, count FROM losses"):
                losses.setdefault(equipment, {})[reason] = n
        elif "evictions" in tables:
            for equipment, n in conn.execute("SELECT equipment, count FROM evictions"):
                losses.setdefault(equipment, {})["evicted"] = n
        evictions = {
            e: sum(n for r, n in by.items() if r in EVICTION_REASONS) for e, by in losses.items()
        }
        evictions = {e: n for e, n in evictions.items() if n}
        pending = conn.execute("SELECT count(*) FROM records WHERE pinned = 1").fetchone()[0] if format2 else 0
        dead_rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        ids = conn.execute("SELECT count(*) FROM emitted_ids").fetchone()[0] if "emitted_ids" in tables else 0
        return {
            "path": str(path),
            "format": meta.get("format"),
            "records": count,
            "bytes": total,
            "oldest_created": oldest_created,
            "first_seq": first_seq,
            "next_seq": meta.get("next_seq"),
            "gateway": meta.get("gateway"),
            "evicted_total": sum(evictions.values()),
            "evicted_by_equipment": evictions,
            "dropped_total": sum(sum(by.values()) for by in losses.values()),
            "losses": losses,
            "announcements_pending": pending,
            "dead_letters_total": meta.get("dead_letters_total", 0),
            "dead_letters_kept": dead_rows,
            "ids_remembered": ids,
            "file_bytes": Path(path).stat().st_size,
        }
    finally:
        conn.close()


def export(path: str | Path, *, dead_letters: bool = False) -> Iterator[dict[str, Any]]:
    """Every record (or dead letter) in seq order as a dict; the payload is decoded UTF-8 JSON text.
    Pending loss announcements are records too (equipment `_gateway`, event `buffer_dropped`)."""
    conn = _open_readonly(Path(path))
    try:
        table = "dead_letters" if dead_letters else "records"
        extra = ", reason, dead_at" if dead_letters else ""
        cur = conn.execute(
            f"SELECT seq, id, topic, equipment, ts, created, attempts, payload{extra} FROM {table} ORDER BY seq"
        )
        names = [d[0] for d in cur.description]
        for row in cur:
            item = dict(zip(names, row, strict=True))
            item["payload"] = bytes(item["payload"]).decode("utf-8", "replace")
            yield item
    finally:
        conn.close()


def purge(path: str | Path, *, dead_letters_only: bool = False) -> int:
    """Delete all records (or only dead letters) of a buffer file that no gateway has open.

    `meta.next_seq` and the loss counters are kept, so seqs never go back and `dropped_total` never
    resets. Pending loss announcements are kept too, and so are the remembered own ids (`emitted_ids`):
    a purged result that its source emits again is still suppressed. Returns the number of rows deleted.
    """
    p = Path(path)
    if not p.exists():
        raise BufferError(f"no buffer file at {p}")
    sidecar = SeqSidecar(p.with_name(p.name + ".seq"))
    try:
        conn = sqlite3.connect(p, isolation_level=None, timeout=5.0)
        try:
            pinned = "pinned = 0" if "losses" in _tables(conn) else "1"
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute("DELETE FROM dead_letters").rowcount
            if not dead_letters_only:
                n += conn.execute(f"DELETE FROM records WHERE {pinned}").rowcount
            conn.execute("COMMIT")
            conn.execute("VACUUM")
        finally:
            conn.close()
    finally:
        sidecar.close()
    return int(n)
