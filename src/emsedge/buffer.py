"""Durable store-and-forward buffer: every message is on disk before anyone tries to publish it.

Design
======
The buffer is a transactional queue in one SQLite file (stdlib `sqlite3`, WAL mode), in the spirit of
Telegraf's output buffer: `append` (durable when it returns), `lease` (hand a batch to the publisher; the
records stay on disk), then `ack` (delivered: delete), `nack` (back to the queue, `attempts + 1`) or
`dead_letter` (poison: moved aside, counted). It is write-through: the runtime appends *every* record, link
up or down, so there is no "start buffering when the link drops" moment that could lose data.

* **One writer.** `run()` is the only task that inserts. `append()` puts its records on a bounded
  in-memory queue and waits; the writer takes everything queued (and, when several producers are
  queueing, gathers more for up to `linger`; at most `batch_max` records), writes it in ONE
  transaction, and wakes every waiter after COMMIT. Batching is what makes
  the disk fast (one fsync per batch, not per record). When the queue is full, `append()` waits: a slow
  or failing disk slows the producers down instead of growing memory.
* **Blocking work off the loop.** Every SQLite call (and the JSON encoding of a batch) runs in a worker
  thread through `anyio.to_thread.run_sync`, on one connection guarded by `_db_lock`. Small in-memory
  state changes happen under `_state_lock` (held for microseconds) so that `stats()`, `begin_replay()`
  and `release_all()` stay synchronous and never wait for a commit.
* **Identity.** The writer assigns each record a uuid4 `id` and the next per-gateway `seq`, encodes the
  payload once (`schema.encode`) and stores the bytes. `seq` is kept in `meta.next_seq`, updated in the
  same transaction as the rows, so it is strictly increasing across restarts and never reused even when
  every row was deleted. A failed transaction is rolled back and its seqs are reused by the retry, so a
  subscriber never sees a gap that is not a real loss.
* **Seq sidecar.** `<path>.seq` holds a reservation R >= every seq ever committed, written and fsynced
  *before* a commit would pass it (in steps of `SEQ_RESERVE_STEP`). When the database is missing or was
  moved aside as corrupt, the fresh one starts at R: seqs jump (the lost range is a real gap) but never
  go back. The sidecar also carries an exclusive `flock`: two gateways cannot share one buffer.
* **Replay.** The replay mark is the highest seq appended when the MQTT link last (re)connected
  (`begin_replay()`); at open it is the highest seq so far, so everything found on disk is backlog.
  Records with `seq <= mark` are backlog and leave with `"replayed": true` (`schema.mark_replayed`; `ts`
  is untouched). With `replay_rate` set, live records are leased first and the backlog only at that rate
  (token bucket, burst of one second), so a long outage neither starves live monitoring nor floods the
  broker; with `replay_rate: null` leasing is strictly oldest first.
* **Bounded disk.** Each row's `size` (payload + topic + id + equipment + ts + `ROW_OVERHEAD`) is counted;
  after each insert the oldest rows are evicted until the total is <= `max_bytes`, and rows older than
  `max_age` are evicted from the head. Evictions are counted per equipment (persisted) and reported in
  the `AppendResult` of the append that caused them (housekeeping evictions are carried to the next
  append), so the runtime emits one `buffer_dropped` event per batch. Below `min_free_bytes` of free disk
  (unless the file's own free pages can take the batch) the writer holds the batch and `append` turns into
  back-pressure; on a full disk or an unwritable file the writer logs one error, keeps the batch in
  memory, retries with capped backoff and logs once when it recovers.
* **Corruption.** A file SQLite calls "not a database" or "malformed" at open is renamed to
  `<path>.corrupt-<UTC time>` (with its -wal/-shm) with one error line, and a fresh file is started.

On-disk format (format 1)
=========================
::

    meta(key TEXT PRIMARY KEY, value)             -- format=1, gateway, next_seq, dead_letters_total
    records(seq INTEGER PRIMARY KEY,              -- rowid: append order
            id TEXT, topic TEXT, equipment TEXT, ts TEXT, created REAL, attempts INTEGER,
            size INTEGER, payload BLOB)           -- payload = schema.encode(...) without the replayed flag
    evictions(equipment TEXT PRIMARY KEY, count INTEGER)
    dead_letters(seq INTEGER PRIMARY KEY, id, topic, equipment, ts, created, attempts, size, payload,
                 reason TEXT, dead_at REAL)      -- the newest DEAD_LETTER_KEEP rows are kept

Invariants
==========
1. `append` returns only after COMMIT (with `sync: full` the commit is fsynced; with `normal` a power cut
   may lose the last commits, never corrupt the file). Records with a seq <= a returned seq are durable.
2. `seq` is strictly increasing per buffer file and across restarts; committed seqs are never reused.
3. A record leaves `records` only by `ack` (delivered), eviction (counted) or `dead_letter` (counted):
   accepted = delivered + evicted + dead-lettered + present.
4. Eviction always removes a prefix in seq order (oldest first); after each write transaction the sum of
   `size` is <= `max_bytes`.
5. A record is in at most one live lease; `lease` never hands out a leased record until it is nacked,
   released (`release_all`) or the process restarts. Lease order is oldest first within each class
   (live, backlog). Leased records may still be evicted; their ack is then a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from emsedge import schema
from emsedge.config import BufferConfig
from emsedge.errors import BufferError
from emsedge.topics import Topics

log = structlog.get_logger("emsedge.buffer")

FORMAT_VERSION = 1
ROW_OVERHEAD = 32
"""Bytes counted per row beyond its strings: rowid, record header, cell pointer (approximate)."""
SEQ_RESERVE_STEP = 100_000
DEAD_LETTER_KEEP = 10_000
QUEUE_APPENDS = 256
"""Append calls the writer queue holds before `append` waits (back-pressure)."""
HOUSEKEEPING_INTERVAL = 1.0
EVICTION_LOG_INTERVAL = 60.0
RETRY_MAX_DELAY = 1.0
_SQL_VARS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, equipment TEXT NOT NULL,
    ts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS evictions (equipment TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, equipment TEXT NOT NULL,
    ts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL, size INTEGER NOT NULL,
    payload BLOB NOT NULL, reason TEXT NOT NULL, dead_at REAL NOT NULL);
"""

_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


# ---------------------------------------------------------------------------------------------------
# Public values


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A record as the publisher sees it: final topic and payload bytes (replayed flag already applied)."""

    seq: int
    id: str
    topic: str
    payload: bytes
    equipment: str
    created: float
    attempts: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one `append` did: `accepted` records committed, `evicted` records dropped to make room.

    Evictions of one write transaction are reported once, in the result of the first append of that
    transaction, so summing `evicted` over all results never double counts.
    """

    accepted: int
    evicted: int
    evicted_by_equipment: dict[str, int]
    evicted_first_ts: str | None
    evicted_last_ts: str | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A batch handed to the publisher; its records stay on disk until acked."""

    id: int
    messages: list[StoredMessage]


@dataclass(frozen=True, slots=True)
class BufferStats:
    count: int
    bytes: int
    oldest_created: float | None
    next_seq: int
    evicted_total: int
    evicted_by_equipment: dict[str, int]
    dead_letters: int
    leased: int
    backlog: int
    writable: bool
    last_error: str | None
    queued: int = 0
    """Records waiting in memory for the writer (grows while the disk is full, bounded)."""


# ---------------------------------------------------------------------------------------------------
# Internals


@dataclass(slots=True)
class _Pending:
    records: Sequence[schema.Record]
    done: anyio.Event
    result: AppendResult | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Evicted:
    count: int = 0
    by_equipment: dict[str, int] = field(default_factory=dict)
    first_ts: str | None = None
    last_ts: str | None = None
    up_to_seq: int = 0
    bytes: int = 0
    backlog: int = 0

    def add(self, seq: int, equipment: str, ts: str, size: int, mark: int) -> None:
        self.count += 1
        self.by_equipment[equipment] = self.by_equipment.get(equipment, 0) + 1
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        self.up_to_seq = max(self.up_to_seq, seq)
        self.bytes += size
        if seq <= mark:
            self.backlog += 1

    def merge(self, other: _Evicted) -> None:
        self.count += other.count
        for k, v in other.by_equipment.items():
            self.by_equipment[k] = self.by_equipment.get(k, 0) + v
        for ts in (other.first_ts, other.last_ts):
            if ts is not None:
                self.first_ts = ts if self.first_ts is None or ts < self.first_ts else self.first_ts
                self.last_ts = ts if self.last_ts is None or ts > self.last_ts else self.last_ts

    def result(self, accepted: int) -> AppendResult:
        return AppendResult(accepted, self.count, dict(self.by_equipment), self.first_ts, self.last_ts)


class _LowDisk(Exception):
    def __init__(self, free: int, floor: int) -> None:
        super().__init__(f"free disk {free} bytes is below buffer.min_free_bytes {floor}")


class _TokenBucket:
    """`rate` tokens per second, burst of one second (at least one token)."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.clock = clock
        self.tokens = self.capacity
        self.stamp = clock()

    def available(self) -> float:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, n: int) -> None:
        self.tokens -= n

    def seconds_until_one(self) -> float:
        missing = 1.0 - self.available()
        return 0.0 if missing <= 0 else missing / self.rate


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA journal_size_limit=67108864")
        conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def _free_disk(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize



@contextlib.contextmanager
def _immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; anything raised inside rolls back and propagates."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()
        raise

def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: list[int], size: int = _SQL_VARS) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _SeqSidecar:
    """`<db>.seq`: a fsynced seq reservation (>= every committed seq) and the single-user lock.

    On a read-only file system it is opened read-only (still locked, still read); `reserve()` then
    retries a writable open, so the writer's normal retry loop heals it when the disk does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.writable = False
        self.reserved = 0
        self._open()
        if self.fd is not None:
            raw = os.pread(self.fd, 64, 0).decode("ascii", "replace").strip()
            self.reserved = int(raw) if raw.isdigit() else 0

    def _open(self) -> None:
        self.close()
        writable = True
        fd: int | None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            writable = False
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise BufferError(f"buffer {self.path} is in use by another emsedge process") from exc
        self.fd, self.writable = fd, writable

    def reserve(self, value: int) -> None:
        """Persist `value` (fixed width, overwritten in place: no new block needed on a full disk)."""
        if not self.writable:
            self._open()
        if self.fd is None or not self.writable:
            raise OSError(errno.EROFS, f"cannot write {self.path}")
        data = f"{value:020d}\n".encode("ascii")
        written = os.pwrite(self.fd, data, 0)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {self.path}")
        os.fsync(self.fd)
        self.reserved = value

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------------------
# The buffer


class Buffer:
    """The durable queue between normalisation and the publisher. See the module docstring."""

    def __init__(
        self,
        config: BufferConfig,
        *,
        gateway: str,
        topics: Topics,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.topics = topics
        self.path = Path(config.path)
        self._clock = clock
        self._wall = wall_clock
        self._db_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._sidecar: _SeqSidecar | None = None
        # committed state (mutated under _state_lock)
        self._next_seq = 1
        self._count = 0
        self._bytes = 0
        self._oldest_created: float | None = None
        self._evicted_total = 0
        self._evicted_by_equipment: dict[str, int] = {}
        self._dead_letters = 0
        self._backlog = 0
        self._mark = 0
        # leasing (mutated under _state_lock)
        self._leased: dict[int, int] = {}
        self._ack_pending: set[int] = set()
        self._lease_ids = 0
        self._epoch = 0
        self._backlog_cursor = 0
        self._live_cursor = 0
        self._bucket = _TokenBucket(config.replay_rate, clock) if config.replay_rate else None
        # writer
        self._send: MemoryObjectSendStream[_Pending] | None = None
        self._receive: MemoryObjectReceiveStream[_Pending] | None = None
        self._queued = 0
        self._batch: list[_Pending] = []
        self._reopen_needed = False
        self._unreported = _Evicted()
        self._writable = True
        self._last_error: str | None = None
        self._fault: str | None = None
        self._changed: anyio.Event | None = None
        self._ack_fault_logged = False
        self._evict_log_pending = _Evicted()
        self._evict_logged_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the file, then be the single writer until cancelled; drain the queue before returning."""
        try:
            await anyio.to_thread.run_sync(self._open)
        except BaseException:  # also cancellation during the open: never keep the file and its lock
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)
            raise
        self._changed = anyio.Event()
        send, receive = anyio.create_memory_object_stream[_Pending](QUEUE_APPENDS)
        self._send, self._receive = send, receive
        try:
            task_status.started()
            await self._write_loop(receive)
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain_and_close(receive)

    async def _drain_and_close(self, receive: MemoryObjectReceiveStream[_Pending]) -> None:
        batch, self._batch = self._batch, []
        with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                batch.append(receive.receive_nowait())
        if self._send is not None:
            self._send.close()
        receive.close()
        if batch:
            try:
                await self._commit(batch)
            except Exception as exc:
                lost = sum(len(p.records) for p in batch)
                log.error("buffer_shutdown_write_failed", records=lost, error=_error_text(exc), path=str(self.path))
                for p in batch:
                    p.error = BufferError(f"buffer closed before the records were written: {exc}")
                    p.done.set()
        await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        with self._db_lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            if self._sidecar is not None:
                self._sidecar.close()
                self._sidecar = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sidecar = _SeqSidecar(self.path.with_name(self.path.name + ".seq"))
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            conn = self._open_db()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                readonly = self._open_readonly_fallback(exc) if existed else None
                if readonly is None:
                    self._sidecar.close()
                    raise BufferError(f"cannot open buffer {self.path}: {exc}") from exc
                self._conn = readonly
                self._load_state(readonly, fresh=False)
                return
            moved = self._move_aside()
            log.error(
                "buffer_corrupt_moved_aside",
                path=str(self.path),
                moved_to=str(moved),
                error=_error_text(exc),
                next_seq=max(self._sidecar.reserved, 1),
                hint="a fresh buffer was started; the old file is kept for inspection",
            )
            existed = False
            try:
                conn = self._open_db()
            except BaseException:
                self._sidecar.close()
                raise
        except BaseException:
            self._sidecar.close()
            raise
        self._conn = conn
        self._load_state(conn, fresh=not existed)

    def _open_readonly_fallback(self, error: sqlite3.Error) -> sqlite3.Connection | None:
        """An existing file that cannot be opened for writing (read-only mount): serve it read-only.

        The writer reports the fault once and keeps trying a normal connection, so appends wait
        (back-pressure) and resume when the disk is writable again; the backlog keeps draining meanwhile.
        """
        uri = self.path.absolute().as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        except sqlite3.Error:
            return None
        self._enter_fault(error)
        return conn

    def _open_db(self, *, check: bool = True) -> sqlite3.Connection:
        """Connect and create the tables; with `check`, read every row header (finds a damaged file)."""
        conn = _connect(self.path, self.config.sync)
        try:
            conn.executescript(_SCHEMA)
            if check:
                conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        self.path.rename(target)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        return target

    def _load_state(self, conn: sqlite3.Connection, *, fresh: bool) -> None:
        assert self._sidecar is not None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "format" in meta and int(meta["format"]) > FORMAT_VERSION:
            raise BufferError(f"buffer {self.path} has format {meta['format']}; this emsedge reads {FORMAT_VERSION}")
        count, total, max_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM records"
        ).fetchone()
        next_seq = max(int(meta.get("next_seq", 1)), max_seq + 1)
        if "next_seq" not in meta and self._sidecar.reserved > next_seq:
            log.warning(
                "buffer_seq_continued_from_sidecar",
                path=str(self.path),
                next_seq=self._sidecar.reserved,
                fresh=fresh,
            )
            next_seq = self._sidecar.reserved
        if meta.get("gateway") not in (None, self.gateway):
            log.warning("buffer_gateway_changed", path=str(self.path), was=meta["gateway"], now=self.gateway)
        try:
            with _immediate_transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [("format", FORMAT_VERSION), ("gateway", self.gateway), ("next_seq", next_seq)],
                )
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('dead_letters_total', 0)")
        except sqlite3.OperationalError as exc:
            # Unwritable (read-only mount, full disk): keep running on what is there; the writer
            # reports it once and retries with a fresh connection. Committed rows stay leasable.
            self._enter_fault(exc)
        self._next_seq = next_seq
        self._count = int(count)
        self._bytes = int(total)
        self._oldest_created = self._head_created(conn)
        self._evicted_by_equipment = dict(conn.execute("SELECT equipment, count FROM evictions").fetchall())
        self._evicted_total = sum(self._evicted_by_equipment.values())
        dead = conn.execute("SELECT value FROM meta WHERE key='dead_letters_total'").fetchone()
        self._dead_letters = int(dead[0]) if dead else 0
        self._mark = next_seq - 1
        self._backlog = self._count
        self._backlog_cursor = 0
        self._live_cursor = self._mark
        log.info(
            "buffer_opened",
            path=str(self.path),
            records=self._count,
            bytes=self._bytes,
            next_seq=next_seq,
            sync=self.config.sync,
        )

    @staticmethod
    def _head_created(conn: sqlite3.Connection) -> float | None:
        row = conn.execute("SELECT created FROM records ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    # -- append / writer -----------------------------------------------------------------------------

    async def append(self, records: Sequence[schema.Record]) -> AppendResult:
        """Queue `records` for the writer and return once they are committed (durable)."""
        if not records:
            return AppendResult(0, 0, {}, None, None)
        if self._send is None:
            raise BufferError("the buffer is not running")
        pending = _Pending(list(records), anyio.Event())
        self._queued += len(records)
        try:
            await self._send.send(pending)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._queued -= len(records)
            raise BufferError("the buffer is shutting down") from exc
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _write_loop(self, receive: MemoryObjectReceiveStream[_Pending]) -> None:
        while True:
            batch = await self._collect(receive)
            if batch:
                await self._commit_until_done(batch)
                self._batch = []
            else:
                await self._housekeeping()

    async def _collect(self, receive: MemoryObjectReceiveStream[_Pending]) -> list[_Pending]:
        """Gather one batch: the first append, everything already queued, then (only when several appends
        were queued, i.e. producers are concurrent) more for up to `linger`, at most `batch_max` records.

        A lone producer gains nothing from lingering (it waits for its own commit before appending
        again), so it gets group commit at disk speed; concurrent producers share transactions.
        """
        # The batch lives on self until committed, so a shutdown during linger or retry still writes it.
        self._batch = batch = []
        with anyio.move_on_after(HOUSEKEEPING_INTERVAL):
            batch.append(await receive.receive())
        if not batch:
            return batch
        n = len(batch[0].records)
        limit = self.config.batch_max
        with contextlib.suppress(anyio.WouldBlock):
            while n < limit:
                item = receive.receive_nowait()
                batch.append(item)
                n += len(item.records)
        if len(batch) > 1 and n < limit and self.config.linger > 0:
            with anyio.move_on_after(self.config.linger):
                while n < limit:
                    item = await receive.receive()
                    batch.append(item)
                    n += len(item.records)
        return batch
        n = len(batch[0].records)
        limit = self.config.batch_max
        if self.config.linger > 0:
            with anyio.move_on_after(self.config.linger):
                while n < limit:
                    item = await receive.receive()
                    batch.append(item)
                    n += len(item.records)
        with contextlib.suppress(anyio.WouldBlock):
            while n < limit:
                item = receive.receive_nowait()
                batch.append(item)
                n += len(item.records)
        return batch

    async def _commit_until_done(self, batch: list[_Pending]) -> None:
        """Commit `batch`, retrying (with the records kept in memory) while the disk refuses it."""
        delay = 0.05
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    await self._commit(batch)
            except (sqlite3.Error, OSError, _LowDisk) as exc:
                self._enter_fault(exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
            else:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        """One transaction for the whole batch; wakes the waiters after COMMIT. Raises on failure."""
        evicted = await anyio.to_thread.run_sync(self._write_batch, batch)
        self._leave_fault()
        accepted = sum(len(p.records) for p in batch)
        self._queued -= accepted
        for i, p in enumerate(batch):
            p.result = evicted.result(len(p.records)) if i == 0 else AppendResult(len(p.records), 0, {}, None, None)
            p.done.set()
        self._notify()

    async def _housekeeping(self) -> None:
        """Idle work: retry deletes of acked records that failed, evict by age.

        Failures are logged through the fault state and retried on the next round.
        """
        if self._ack_pending:
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._ack_sync)
            except (sqlite3.Error, OSError):
                pass  # already logged once by ack(); retried next round
            else:
                self._ack_recovered()
        if self.config.max_age is None or self._oldest_created is None:
            return
        if self._oldest_created >= self._wall() - self.config.max_age:
            return
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._evict_expired_txn)
        except (sqlite3.Error, OSError) as exc:
            self._enter_fault(exc)

    def _enter_fault(self, exc: BaseException) -> None:
        text = _error_text(exc)
        self._writable = False
        self._last_error = text
        kind = "low_disk" if isinstance(exc, _LowDisk) else "write_failed"
        if not isinstance(exc, _LowDisk):
            self._reopen_needed = True  # a read-only or broken handle only heals with a new connection
        if self._fault == kind:
            return
        self._fault = kind
        if isinstance(exc, _LowDisk):
            log.warning(
                "buffer_low_disk_backpressure",
                path=str(self.path),
                error=text,
                hint="appends wait until disk space returns; nothing is dropped",
            )
        else:
            log.error(
                "buffer_write_failed",
                path=str(self.path),
                error=text,
                queued=self._queued,
                hint="records are kept in memory (bounded) and retried; check disk space and permissions",
            )

    def _leave_fault(self) -> None:
        self._writable = True
        if self._fault is not None:
            log.info("buffer_write_recovered", path=str(self.path), was=self._fault)
            self._fault = None

    def _reopen(self) -> None:
        """Under _db_lock: replace the connection (after EROFS/EIO/read-only opens); state stays valid
        because it only ever reflects committed transactions."""
        fresh = self._open_db(check=False)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = fresh
        self._reopen_needed = False

    def _write_batch(self, batch: list[_Pending]) -> _Evicted:
        """Worker thread: encode, insert, evict, commit. All or nothing.

        Encoding happens before taking `_db_lock` (only the writer assigns seqs), so leases and acks
        are not held up by JSON work.
        """
        rows: list[tuple[Any, ...]] = []
        now = self._wall()
        seq = self._next_seq
        gateway = self.gateway
        for pending in batch:
            for record in pending.records:
                message_id = str(uuid.uuid4())
                payload = schema.encode(record, gateway=gateway, seq=seq, message_id=message_id)
                topic = self.topics.for_record(record)
                size = len(payload) + len(topic) + 36 + len(record.equipment) + len(record.ts) + ROW_OVERHEAD
                rows.append((seq, message_id, topic, record.equipment, record.ts, now, size, payload))
                seq += 1
        incoming = sum(r[6] for r in rows)
        with self._db_lock:
            if self._reopen_needed or self._conn is None:
                self._reopen()
            conn = self._require_conn()
            self._check_free_space(conn, incoming)
            last = seq - 1
            sidecar = self._sidecar
            assert sidecar is not None
            if last >= sidecar.reserved:
                sidecar.reserve(last + SEQ_RESERVE_STEP)
            with _immediate_transaction(conn):
                evicted = _Evicted()
                mark = self._mark
                if self.config.max_age is not None:
                    self._evict_head(conn, evicted, mark, older_than=now - self.config.max_age)
                conn.executemany(
                    "INSERT INTO records(seq, id, topic, equipment, ts, created, attempts, size, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                    rows,
                )
                total = self._bytes - evicted.bytes + incoming
                if total > self.config.max_bytes:
                    self._evict_head(conn, evicted, mark, need=total - int(self.config.max_bytes))
                conn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (seq,))
                self._persist_evictions(conn, evicted)
                head = self._head_created(conn) if evicted.count else None
            with self._state_lock:
                self._next_seq = seq
                self._count += len(rows) - evicted.count
                self._bytes += incoming - evicted.bytes
                if evicted.count:
                    self._oldest_created = head
                elif self._oldest_created is None:
                    self._oldest_created = now
                self._apply_eviction(evicted)
                report = self._unreported
                self._unreported = _Evicted()
            self._log_eviction(evicted)
            report.merge(evicted)
            return report

    def _check_free_space(self, conn: sqlite3.Connection, incoming: int) -> None:
        floor = int(self.config.min_free_bytes)
        if floor <= 0:
            return
        free = _free_disk(self.path.parent)
        if free >= floor:
            return
        # The file's own free pages take the batch without growing it: writing cannot fill the disk.
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free_pages * page_size >= 2 * incoming + 65536:
            return
        raise _LowDisk(free, floor)

    def _evict_head(
        self,
        conn: sqlite3.Connection,
        evicted: _Evicted,
        mark: int,
        *,
        need: int = 0,
        older_than: float | None = None,
    ) -> None:
        """Delete a prefix of `records` (oldest first): `need` bytes, or rows created before `older_than`."""
        freed = 0
        after = 0
        cut = 0
        done = False
        while not done:
            rows = conn.execute(
                "SELECT seq, equipment, ts, size, created FROM records WHERE seq > ? ORDER BY seq LIMIT 1024",
                (after,),
            ).fetchall()
            if not rows:
                break
            for seq, equipment, ts, size, created in rows:
                if older_than is not None and created >= older_than:
                    done = True
                    break
                evicted.add(seq, equipment, ts, size, mark)
                freed += size
                cut = seq
                if older_than is None and freed >= need:
                    done = True
                    break
            after = rows[-1][0]
        if cut:
            conn.execute("DELETE FROM records WHERE seq <= ?", (cut,))

    @staticmethod
    def _persist_evictions(conn: sqlite3.Connection, evicted: _Evicted) -> None:
        if evicted.count:
            conn.executemany(
                "INSERT INTO evictions(equipment, count) VALUES (?, ?) "
                "ON CONFLICT(equipment) DO UPDATE SET count = count + excluded.count",
                list(evicted.by_equipment.items()),
            )

    def _apply_eviction(self, evicted: _Evicted) -> None:
        """Under _state_lock: counters and lease bookkeeping after a committed eviction."""
        if not evicted.count:
            return
        self._evicted_total += evicted.count
        for k, v in evicted.by_equipment.items():
            self._evicted_by_equipment[k] = self._evicted_by_equipment.get(k, 0) + v
        self._backlog -= evicted.backlog
        cut = evicted.up_to_seq
        for seq in [s for s in self._leased if s <= cut]:
            del self._leased[seq]
        self._ack_pending = {s for s in self._ack_pending if s > cut}

    def _log_eviction(self, evicted: _Evicted) -> None:
        """One warning when eviction starts, then at most one summary per EVICTION_LOG_INTERVAL."""
        if not evicted.count:
            return
        self._evict_log_pending.merge(evicted)
        now = self._clock()
        if self._evict_logged_at is not None and now - self._evict_logged_at < EVICTION_LOG_INTERVAL:
            return
        pending, self._evict_log_pending = self._evict_log_pending, _Evicted()
        self._evict_logged_at = now
        log.warning(
            "buffer_evicted",
            records=pending.count,
            by_equipment=pending.by_equipment,
            equipment=sorted(pending.by_equipment),
            first_ts=pending.first_ts,
            last_ts=pending.last_ts,
            max_bytes=int(self.config.max_bytes),
            max_age=self.config.max_age,
            path=str(self.path),
            hint="the buffer is full or records are too old; the oldest records are dropped and counted",
        )

    def _evict_expired_txn(self) -> None:
        assert self.config.max_age is not None
        with self._db_lock:
            conn = self._require_conn()
            evicted = _Evicted()
            with _immediate_transaction(conn):
                self._evict_head(conn, evicted, self._mark, older_than=self._wall() - self.config.max_age)
                self._persist_evictions(conn, evicted)
                head = self._head_created(conn)
            with self._state_lock:
                self._count -= evicted.count
                self._bytes -= evicted.bytes
                self._oldest_created = head
                self._apply_eviction(evicted)
                self._unreported.merge(evicted)
            self._log_eviction(evicted)

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BufferError("the buffer is not open")
        return self._conn

    # -- leasing -----------------------------------------------------------------------------------

    def begin_replay(self) -> None:
        """The link (re)connected: everything appended so far is backlog from now on."""
        with self._state_lock:
            self._mark = self._next_seq - 1
            self._backlog = self._count
            self._live_cursor = max(self._live_cursor, self._mark)
        self._notify()

    def release_all(self) -> None:
        """Forget every lease (the publisher lost its session): those records become leasable again."""
        with self._state_lock:
            self._epoch += 1
            self._leased.clear()
            self._backlog_cursor = 0
            self._live_cursor = self._mark
        self._notify()

    async def lease(self, max_messages: int) -> Lease:
        """Hand out up to `max_messages` not-leased records (see the replay policy in the module doc)."""
        if max_messages <= 0:
            return Lease(0, [])
        try:
            # Shielded: once the thread has marked rows leased, the caller must receive the lease.
            with anyio.CancelScope(shield=True):
                lease = await anyio.to_thread.run_sync(self._lease_sync, max_messages)
        except sqlite3.Error as exc:
            raise BufferError(f"cannot read the buffer {self.path}: {exc}") from exc
        return lease

    def _lease_sync(self, n: int) -> Lease:
        with self._db_lock:
            conn = self._require_conn()
            with self._state_lock:
                epoch = self._epoch
                mark = self._mark
                skip = set(self._leased) | self._ack_pending
                bcur = self._backlog_cursor
                lcur = max(self._live_cursor, mark)
            out: list[StoredMessage] = []
            if self._bucket is None:
                got, bcur = self._scan(conn, bcur, mark, n, skip, replayed=True)
                out += got
                if len(out) < n:
                    got, lcur = self._scan(conn, lcur, None, n - len(out), skip, replayed=False)
                    out += got
            else:
                got, lcur = self._scan(conn, lcur, None, n, skip, replayed=False)
                out += got
                with self._state_lock:  # the bucket is also read by wait_for_messages() on the loop
                    allowance = min(n - len(out), math.floor(self._bucket.available()))
                if allowance > 0:
                    got, bcur = self._scan(conn, bcur, mark, allowance, skip, replayed=True)
                    with self._state_lock:
                        self._bucket.take(len(got))
                    out += got
            with self._state_lock:
                if self._epoch == epoch:  # a release_all() meanwhile reset the cursors: keep its reset
                    self._backlog_cursor = bcur
                    self._live_cursor = lcur
                self._lease_ids += 1
                lease_id = self._lease_ids
                for m in out:
                    self._leased[m.seq] = lease_id
            return Lease(lease_id, out)

    @staticmethod
    def _scan(
        conn: sqlite3.Connection,
        cursor: int,
        upto: int | None,
        n: int,
        skip: set[int],
        *,
        replayed: bool,
    ) -> tuple[list[StoredMessage], int]:
        """Oldest first from seq > cursor (and <= upto), skipping leased rows. Returns (taken, new cursor).

        The new cursor is the last row examined: everything at or below it in this range is now leased,
        pending deletion or gone, which is the invariant the cursor stands for.
        """
        out: list[StoredMessage] = []
        sql = (
            "SELECT seq, id, topic, payload, equipment, created, attempts FROM records "
            "WHERE seq > ? " + ("AND seq <= ? " if upto is not None else "") + "ORDER BY seq LIMIT ?"
        )
        mark_replayed = schema.mark_replayed
        while len(out) < n:
            want = n - len(out) + min(len(skip), 4096)
            params: tuple[int, ...] = (cursor, upto, want) if upto is not None else (cursor, want)
            rows = conn.execute(sql, params).fetchall()
            if not rows:
                break
            for seq, mid, topic, payload, equipment, created, attempts in rows:
                cursor = seq
                if seq in skip:
                    continue
                out.append(
                    StoredMessage(
                        seq,
                        mid,
                        topic,
                        mark_replayed(payload) if replayed else bytes(payload),
                        equipment,
                        created,
                        attempts,
                        replayed,
                    )
                )
                if len(out) >= n:
                    break
            if len(rows) < want and len(out) < n:
                break
        return out, cursor

    async def ack(self, lease: Lease, seqs: Iterable[int]) -> None:
        """Delivered: delete these records (only seqs that belong to `lease`).

        If the delete cannot be written (full disk), the seqs stay out of circulation and the delete is
        retried with the next ack; after a crash they would be sent again (at-least-once).
        """
        allowed = {m.seq for m in lease.messages}
        chosen = [s for s in seqs if s in allowed]
        if not chosen:
            return
        with self._state_lock:
            self._ack_pending.update(chosen)
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._ack_sync)
        except (sqlite3.Error, OSError) as exc:
            self._reopen_needed = True
            if not self._ack_fault_logged:
                self._ack_fault_logged = True
                log.error(
                    "buffer_ack_failed",
                    path=str(self.path),
                    error=_error_text(exc),
                    hint="delivered records stay on disk until the delete succeeds; retried with the next ack",
                )
        else:
            self._ack_recovered()

    def _ack_recovered(self) -> None:
        if self._ack_fault_logged:
            self._ack_fault_logged = False
            log.info("buffer_ack_recovered", path=str(self.path))

    def _ack_sync(self) -> None:
        with self._db_lock:
            if self._reopen_needed:
                self._reopen()
            conn = self._require_conn()
            with self._state_lock:
                todo = sorted(self._ack_pending)
            if not todo:
                return
            deleted: list[tuple[int, int]] = []
            # A delete need not reach the platter: losing it in a power cut only re-sends delivered
            # records (at-least-once). The next append's fsync persists it anyway (WAL order).
            relaxed = self.config.sync == "full"
            if relaxed:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with _immediate_transaction(conn):
                    for chunk in _chunks(todo):
                        deleted += conn.execute(
                            f"DELETE FROM records WHERE seq IN ({_placeholders(len(chunk))}) RETURNING seq, size",
                            chunk,
                        ).fetchall()
                    head = self._head_created(conn)
            finally:
                if relaxed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous=FULL")
            with self._state_lock:
                self._remove_rows(deleted, head)
                for s in todo:
                    self._ack_pending.discard(s)
                    self._leased.pop(s, None)

    def _remove_rows(self, deleted: list[tuple[int, int]], head: float | None) -> None:
        """Under _state_lock: counters after rows left `records` by ack or dead letter."""
        self._count -= len(deleted)
        self._bytes -= sum(size for _, size in deleted)
        self._backlog -= sum(1 for seq, _ in deleted if seq <= self._mark)
        self._oldest_created = head

    async def nack(self, lease: Lease, seqs: Iterable[int]) -> None:
        """Not delivered: back to the queue in seq order, `attempts + 1`."""
        with self._state_lock:
            chosen = sorted(s for s in seqs if self._leased.get(s) == lease.id)
        if not chosen:
            return
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._nack_sync, chosen)
        except (sqlite3.Error, OSError) as exc:
            log.warning("buffer_nack_attempts_not_saved", path=str(self.path), error=_error_text(exc))
        with self._state_lock:
            for s in chosen:
                if self._leased.get(s) == lease.id:
                    del self._leased[s]
            backlog = [s for s in chosen if s <= self._mark]
            live = [s for s in chosen if s > self._mark]
            if backlog:
                self._backlog_cursor = min(self._backlog_cursor, backlog[0] - 1)
            if live:
                self._live_cursor = min(self._live_cursor, live[0] - 1)
        self._notify()

    def _nack_sync(self, seqs: list[int]) -> None:
        with self._db_lock:
            conn = self._require_conn()
            with _immediate_transaction(conn):
                for chunk in _chunks(seqs):
                    conn.execute(
                        f"UPDATE records SET attempts = attempts + 1 WHERE seq IN ({_placeholders(len(chunk))})",
                        chunk,
                    )

    async def dead_letter(self, seqs: Iterable[int], reason: str) -> None:
        """Poison records: move them to `dead_letters` (counted, logged) so the queue moves on."""
        chosen = sorted(set(seqs))
        if not chosen:
            return
        try:
            with anyio.CancelScope(shield=True):
                moved = await anyio.to_thread.run_sync(self._dead_letter_sync, chosen, reason)
        except sqlite3.Error as exc:
            raise BufferError(f"cannot move records to dead letters in {self.path}: {exc}") from exc
        if moved:
            log.error(
                "buffer_dead_lettered",
                records=len(moved),
                seqs=[s for s, _, _ in moved][:20],
                equipment=sorted({e for _, _, e in moved}),
                reason=reason,
                path=str(self.path),
            )
        self._notify()

    def _dead_letter_sync(self, seqs: list[int], reason: str) -> list[tuple[int, int, str]]:
        with self._db_lock:
            conn = self._require_conn()
            moved: list[tuple[int, int, str]] = []
            with _immediate_transaction(conn):
                now = self._wall()
                for chunk in _chunks(seqs):
                    marks = _placeholders(len(chunk))
                    conn.execute(
                        "INSERT OR REPLACE INTO dead_letters "
                        "SELECT seq, id, topic, equipment, ts, created, attempts, size, payload, ?, ? "
                        f"FROM records WHERE seq IN ({marks})",
                        (reason, now, *chunk),
                    )
                    moved += conn.execute(
                        f"DELETE FROM records WHERE seq IN ({marks}) RETURNING seq, size, equipment", chunk
                    ).fetchall()
                conn.execute(
                    "DELETE FROM dead_letters WHERE seq NOT IN "
                    "(SELECT seq FROM dead_letters ORDER BY seq DESC LIMIT ?)",
                    (DEAD_LETTER_KEEP,),
                )
                conn.execute(
                    "UPDATE meta SET value = value + ? WHERE key='dead_letters_total'", (len(moved),)
                )
                head = self._head_created(conn)
            with self._state_lock:
                self._remove_rows([(s, size) for s, size, _ in moved], head)
                self._dead_letters += len(moved)
                for s in seqs:
                    self._leased.pop(s, None)
            return moved

    # -- observation ---------------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        with self._state_lock:
            return BufferStats(
                count=self._count,
                bytes=self._bytes,
                oldest_created=self._oldest_created,
                next_seq=self._next_seq,
                evicted_total=self._evicted_total,
                evicted_by_equipment=dict(self._evicted_by_equipment),
                dead_letters=self._dead_letters,
                leased=len(self._leased),
                backlog=self._backlog,
                writable=self._writable,
                last_error=self._last_error,
                queued=self._queued,
            )

    async def wait_for_messages(self, timeout: float) -> None:  # noqa: ASYNC109 - the agreed interface
        """Return when something leasable may exist (or after `timeout`); never busy-waits."""
        with anyio.move_on_after(timeout):
            while True:
                delay = self._leasable_in()
                if delay == 0:
                    return
                event = self._changed
                if event is None:
                    await anyio.sleep(min(timeout, 0.05))
                    continue
                if delay is None:
                    await event.wait()
                else:
                    with anyio.move_on_after(delay):
                        await event.wait()

    def _leasable_in(self) -> float | None:
        """0: leasable now; seconds until a replay token; None: nothing leasable until a change."""
        with self._state_lock:
            stray_acks = sum(1 for s in self._ack_pending if s not in self._leased)
            unleased = self._count - len(self._leased) - stray_acks
            if unleased <= 0:
                return None
            if self._bucket is None:
                return 0.0
            mark = self._mark
            leased_backlog = sum(1 for s in self._leased if s <= mark)
            leased_backlog += sum(1 for s in self._ack_pending if s <= mark and s not in self._leased)
            backlog_free = self._backlog - leased_backlog
            if unleased - max(backlog_free, 0) > 0:
                return 0.0
            if backlog_free <= 0:
                return None
            return self._bucket.seconds_until_one()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()


# ---------------------------------------------------------------------------------------------------
# Offline helpers for `emsedge buffer stats|export|purge` (work on a file; safe while a gateway runs
# for stats/export, which only read).


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


def file_stats(path: str | Path) -> dict[str, Any]:
    """Counts of a buffer file: records, bytes, oldest, next_seq, evictions, dead letters."""
    conn = _open_readonly(Path(path))
    try:
        count, total, oldest_created, first_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(created), min(seq) FROM records"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        evictions = dict(conn.execute("SELECT equipment, count FROM evictions").fetchall())
        dead_rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return {
            "path": str(path),
            "records": count,
            "bytes": total,
            "oldest_created": oldest_created,
            "first_seq": first_seq,
            "next_seq": meta.get("next_seq"),
            "gateway": meta.get("gateway"),
            "evicted_total": sum(evictions.values()),
            "evicted_by_equipment": evictions,
            "dead_letters_total": meta.get("dead_letters_total", 0),
            "dead_letters_kept": dead_rows,
            "file_bytes": Path(path).stat().st_size,
        }
    finally:
        conn.close()


def export(path: str | Path, *, dead_letters: bool = False) -> Iterator[dict[str, Any]]:
    """Every record (or dead letter) in seq order as a dict; the payload is decoded UTF-8 JSON text."""
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

    `meta.next_seq` is kept, so seqs still never go back. Returns the number of rows deleted.
    """
    p = Path(path)
    if not p.exists():
        raise BufferError(f"no buffer file at {p}")
    sidecar = _SeqSidecar(p.with_name(p.name + ".seq"))
    try:
        conn = sqlite3.connect(p, isolation_level=None, timeout=5.0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute("DELETE FROM dead_letters").rowcount
            if not dead_letters_only:
                n += conn.execute("DELETE FROM records").rowcount
            conn.execute("COMMIT")
            conn.execute("VACUUM")
        finally:
            conn.close()
    finally:
        sidecar.close()
    return int(n)
