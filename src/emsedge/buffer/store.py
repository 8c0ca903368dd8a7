"""The owner thread's side of the buffer: the SQLite connection, the seq sidecar and every counter.

`Store` is deliberately not thread-safe: exactly one thread (the owner, started by `Buffer.run`) calls it,
one command at a time, so nothing in here needs a lock. The event loop never touches a `Store`; it reads the
`BufferStats` snapshot the owner publishes after each command. See the package docstring for the design.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from emsedge import schema
from emsedge.buffer.errors import BufferClosed, BufferFormatError, BufferInUse, BufferUnwritable
from emsedge.buffer.model import (
    EVICTION_REASONS,
    REASON_DEAD_LETTER,
    REASON_MAX_AGE,
    REASON_MAX_BYTES,
    REASON_TOO_LARGE,
    REASON_UNPROCESSABLE,
    AppendResult,
    BufferStats,
    Lease,
    OutputStats,
    StoredMessage,
)
from emsedge.config import BufferConfig
from emsedge.topics import Topics

log = structlog.get_logger("emsedge.buffer")

FORMAT_VERSION = 2
ROW_OVERHEAD = 32
"""Bytes counted per row beyond its strings: rowid, record header, cell pointer (approximate)."""
SEQ_RESERVE_STEP = 100_000
DEAD_LETTER_KEEP = 10_000
EVICTION_LOG_INTERVAL = 60.0
ANNOUNCE_INTERVAL = 5.0
"""Seconds (buffer clock) a loss announcement stays open for merging before an output may take it, unless
the output's link (re)connected since (`begin_replay`), which makes every pending announcement due."""
ANNOUNCE_MAX_RANGES = 2000
"""An announcement with this many `dropped_seqs` ranges is closed and a new one opened (bounded size)."""
PACKET_OVERHEAD = 32
"""Bytes a PUBLISH adds to topic + payload (fixed header, lengths, packet id, replayed flag), rounded up."""
_SQL_VARS = 30_000
ID_RETENTION = 30 * 86400.0
"""Seconds (buffer clock) an own id stays in `emitted_ids`: a record carrying an id appended within this
time is suppressed. Covers a source's crash window (seconds) with a wide margin; a result file re-dropped
later is recognised by the result_files adapter's ledger (sha256 of the file, `ledger_retention`)."""
ID_PRUNE_INTERVAL = 3600.0
"""Seconds (buffer clock) between two prunes of `emitted_ids` (in housekeeping, or in an append of ids)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, equipment TEXT NOT NULL,
    ts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL, payload BLOB NOT NULL,
    age_base REAL NOT NULL DEFAULT 0, pinned INTEGER NOT NULL DEFAULT 0, note TEXT);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, equipment TEXT NOT NULL,
    ts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL, size INTEGER NOT NULL,
    payload BLOB NOT NULL, reason TEXT NOT NULL, dead_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS acks (output TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (output, seq))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS losses (
    equipment TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (equipment, reason))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS emitted_ids (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS emitted_ids_at ON emitted_ids(at);
"""

_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


# ---------------------------------------------------------------------------------------------------
# Helpers


class LowDisk(Exception):
    def __init__(self, free: int, floor: int) -> None:
        super().__init__(f"free disk {free} bytes is below buffer.min_free_bytes {floor}")


class TokenBucket:
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


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


FILE_MODE = 0o600
"""The buffer, its -wal/-shm and the .seq sidecar: production data, readable by the gateway's user only."""
DIR_MODE = 0o700


def _make_private_dirs(directory: Path) -> None:
    """Create `directory` and missing parents 0700 whatever the umask (existing folders are left alone)."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask


def _private_files(path: Path) -> None:
    """The database, -wal and -shm: 0600 (SQLite creates them with 0644 & ~umask)."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(FileNotFoundError, PermissionError, OSError):
            os.chmod(path.with_name(name), FILE_MODE)


def _diagnosis(path: Path) -> str:
    """Why a buffer file cannot be created, for the one line the operator reads."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return " (hint: buffer.path needs a writable folder)"
    if st.f_flag & os.ST_RDONLY:
        return " (the file system is read-only; hint: point buffer.path at a writable one, e.g. /var/lib/emsedge)"
    if st.f_bavail * st.f_frsize < 65536:
        return " (the file system is full; hint: free space there or point buffer.path elsewhere)"
    if not os.access(path.parent, os.W_OK):
        return " (no permission to write the folder; hint: give it to the gateway's user, or StateDirectory=)"
    return " (hint: buffer.path needs a writable folder with free space)"


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    if not path.exists():
        with contextlib.suppress(OSError):  # created empty and private first: SQLite keeps an existing mode
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA journal_size_limit=67108864")
        conn.execute("PRAGMA temp_store=MEMORY")
        _private_files(path)
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


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted seqs -> [[first, last], ...] of consecutive runs."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def _merge_ranges(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for first, last in sorted([*a, *b]):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out


class SeqSidecar:
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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            with contextlib.suppress(OSError):
                os.fchmod(fd, FILE_MODE)  # also a sidecar an older emsedge created 0644
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
                raise BufferInUse(f"buffer {self.path} is in use by another emsedge process") from exc
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
# In-memory state (owned by the owner thread)


@dataclass(slots=True)
class Evicted:
    """Evictions of one transaction (or carried from housekeeping to the next append's result)."""

    count: int = 0
    by_equipment: dict[str, int] = field(default_factory=dict)
    first_ts: str | None = None
    last_ts: str | None = None

    def add(self, equipment: str, ts: str) -> None:
        self.count += 1
        self.by_equipment[equipment] = self.by_equipment.get(equipment, 0) + 1
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def merge(self, other: Evicted) -> None:
        self.count += other.count
        for k, v in other.by_equipment.items():
            self.by_equipment[k] = self.by_equipment.get(k, 0) + v
        for ts in (other.first_ts, other.last_ts):
            if ts is not None:
                self.first_ts = ts if self.first_ts is None or ts < self.first_ts else self.first_ts
                self.last_ts = ts if self.last_ts is None or ts > self.last_ts else self.last_ts

    def result(self, accepted: int, refused: int = 0, duplicates: int = 0) -> AppendResult:
        return AppendResult(
            accepted, self.count, dict(self.by_equipment), self.first_ts, self.last_ts, refused, duplicates
        )


@dataclass(slots=True)
class Announcement:
    """A pending `buffer_dropped` message: a pinned row, merged while no output has leased or acked it."""

    seq: int
    id: str
    opened: float
    """Buffer clock when it was opened (coalescing interval)."""
    count: int = 0
    by_equipment: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    ranges: list[list[int]] = field(default_factory=list)
    first_ts: str | None = None
    last_ts: str | None = None

    def note(self) -> str:
        return json.dumps(
            {
                "opened": self.opened, "count": self.count, "by_equipment": self.by_equipment,
                "by_reason": self.by_reason, "ranges": self.ranges, "first_ts": self.first_ts,
                "last_ts": self.last_ts,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_note(cls, seq: int, message_id: str, note: str) -> Announcement:
        d = json.loads(note)
        return cls(
            seq, message_id, float(d["opened"]), int(d["count"]), dict(d["by_equipment"]), dict(d["by_reason"]),
            [list(r) for r in d["ranges"]], d.get("first_ts"), d.get("last_ts"),
        )

    def copy(self) -> Announcement:
        return Announcement(
            self.seq, self.id, self.opened, self.count, dict(self.by_equipment), dict(self.by_reason),
            [list(r) for r in self.ranges], self.first_ts, self.last_ts,
        )


@dataclass(slots=True)
class _Output:
    """One named output's cursor, leases, acks and replay mark."""

    name: str
    mark: int = 0
    backlog: int = 0
    backlog_cursor: int = 0
    live_cursor: int = 0
    leased: dict[int, tuple[int, int]] = field(default_factory=dict)
    """seq -> (lease id, payload bytes)."""
    acked: set[int] = field(default_factory=set)
    """Acked by this output, row kept for another output (only with several outputs)."""
    bucket: TokenBucket | None = None
    announce_now: bool = True
    """The link (re)connected since the last announcement lease: pending announcements are due at once."""


@dataclass(slots=True)
class _Delta:
    """What one transaction changes in memory; applied only after COMMIT."""

    next_seq: int
    added: int = 0
    added_bytes: int = 0
    deleted: list[tuple[int, int, int]] = field(default_factory=list)
    """(seq, size, pinned) rows that left `records`."""
    losses: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: int = 0
    announcements: dict[int, Announcement] = field(default_factory=dict)
    open_announcement: int | None = None
    evicted: Evicted = field(default_factory=Evicted)
    evicted_seqs: list[int] = field(default_factory=list)
    head: tuple[float, float] | None = None
    """(created, age_base) of the new head (None when empty); only read when `head_changed`."""
    head_changed: bool = False


# ---------------------------------------------------------------------------------------------------
# The store


class Store:
    """The buffer's durable state and every operation on it. Only the owner thread calls it."""

    def __init__(
        self,
        config: BufferConfig,
        *,
        gateway: str,
        topics: Topics,
        outputs: Sequence[str],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        encode: schema.Encode = schema.encode,
    ) -> None:
        if not outputs or len(set(outputs)) != len(outputs):
            raise ValueError("outputs must be distinct names, at least one")
        self.config = config
        self.gateway = gateway
        self.topics = topics
        self.encode = encode
        """Record -> payload of an appended record (`schema.encode`; with compact telemetry, the meta's)."""
        self.path = Path(config.path)
        self.clock = clock
        self.wall = wall_clock
        self.conn: sqlite3.Connection | None = None
        self.sidecar: SeqSidecar | None = None
        self.next_seq = 1
        self.count = 0
        self.bytes = 0
        self.pinned_bytes = 0
        self.head: tuple[float, float] | None = None
        self.losses: Counter[tuple[str, str]] = Counter()
        self.dead_letters = 0
        self.announcements: dict[int, Announcement] = {}
        self.open_announcement: int | None = None
        self.outputs = {name: _Output(name) for name in outputs}
        for out in self.outputs.values():
            out.bucket = TokenBucket(config.replay_rate, clock) if config.replay_rate else None
        self.lease_ids = 0
        self.max_message_bytes: int | None = None
        self.base0 = 0.0
        self.mono0 = clock()
        self.writable = True
        self.last_error: str | None = None
        self.fault: str | None = None
        self.reopen_needed = False
        self.unreported = Evicted()
        self.unsettled: list[tuple[Lease, list[int], list[tuple[int, str]]]] = []
        self.settle_fault_logged = False
        self.evict_log_pending = Evicted()
        self.evict_logged_at: float | None = None
        self.poison_logged: set[tuple[str, str, str]] = set()
        self.duplicates_suppressed = 0
        """Records not stored because their own id was appended before (since this process started)."""
        self.ids_pruned_at: float | None = None
        """Buffer clock of the last prune of `emitted_ids` (None: not yet since open)."""

    # -- clock ---------------------------------------------------------------------------------------

    def now_base(self) -> float:
        """The buffer clock: monotonic while running, continued from the last commit across restarts."""
        return self.base0 + (self.clock() - self.mono0)

    # -- open / close --------------------------------------------------------------------------------

    def open(self) -> None:
        if self.path.is_dir():
            raise BufferUnwritable(
                f"buffer.path {self.path} is a directory (hint: name a file in it, e.g. {self.path / 'buffer.db'})"
            )
        try:
            _make_private_dirs(self.path.parent)
            self.sidecar = SeqSidecar(self.path.with_name(self.path.name + ".seq"))
        except OSError as exc:
            raise BufferUnwritable(
                f"cannot create buffer {self.path}: {exc.strerror or exc} "
                "(hint: buffer.path needs a writable folder with free space; under systemd StateDirectory=)"
            ) from exc
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            conn = self._open_db()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                readonly = self._open_readonly_fallback(exc) if existed else None
                if readonly is None:
                    self.sidecar.close()
                    raise BufferUnwritable(f"cannot open buffer {self.path}: {exc}{_diagnosis(self.path)}") from exc
                self.conn = readonly
                self._load_state(readonly, fresh=False)
                return
            moved = self._move_aside()
            log.error(
                "buffer_corrupt_moved_aside",
                path=str(self.path),
                moved_to=str(moved),
                error=error_text(exc),
                next_seq=max(self.sidecar.reserved, 1),
                hint="a fresh buffer was started; the old file is kept for inspection",
            )
            existed = False
            try:
                conn = self._open_db()
            except BaseException:
                self.sidecar.close()
                raise
        except BaseException:
            self.sidecar.close()
            raise
        self.conn = conn
        self._load_state(conn, fresh=not existed)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
        if self.sidecar is not None:
            self.sidecar.close()
            self.sidecar = None

    def _open_readonly_fallback(self, error: sqlite3.Error) -> sqlite3.Connection | None:
        """An existing file that cannot be opened for writing (read-only mount): serve it read-only."""
        uri = self.path.absolute().as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("SELECT count(*) FROM records").fetchone()
        except sqlite3.Error:
            return None
        self.enter_fault(error)
        return conn

    def _open_db(self, *, check: bool = True) -> sqlite3.Connection:
        """Connect, upgrade format 1 in place, create the tables; with `check`, read every row header."""
        conn = _connect(self.path, self.config.sync)
        try:
            self._upgrade_format_1(conn)
            # One transaction: a reader (`emsedge buffer stats` on a running gateway) sees all tables or none.
            conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            if check:
                conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _upgrade_format_1(self, conn: sqlite3.Connection) -> None:
        """Format 1 -> 2 in one transaction: new record columns, `losses` from `evictions`, `acks`."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "records" not in tables or "meta" not in tables:
            return
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        if row is None or int(row[0]) != 1:
            return
        wall = self.wall()
        with _immediate_transaction(conn):
            conn.execute("ALTER TABLE records ADD COLUMN age_base REAL NOT NULL DEFAULT 0")
            conn.execute("ALTER TABLE records ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
            conn.execute("ALTER TABLE records ADD COLUMN note TEXT")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS acks (output TEXT NOT NULL, seq INTEGER NOT NULL, "
                "PRIMARY KEY (output, seq)) WITHOUT ROWID"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS losses (equipment TEXT NOT NULL, reason TEXT NOT NULL, "
                "count INTEGER NOT NULL, PRIMARY KEY (equipment, reason)) WITHOUT ROWID"
            )
            # Ages on the buffer clock: a format-1 row's age is taken from the wall clock once, here.
            conn.execute("UPDATE records SET age_base = -max(? - created, 0)", (wall,))
            if "evictions" in tables:
                conn.execute("INSERT INTO losses SELECT equipment, 'evicted', count FROM evictions WHERE count > 0")
                conn.execute("DROP TABLE evictions")
            dead = conn.execute("SELECT value FROM meta WHERE key='dead_letters_total'").fetchone()
            total_dead = int(dead[0]) if dead else 0
            kept = conn.execute(
                "SELECT equipment, count(*) FROM dead_letters GROUP BY equipment"
            ).fetchall() if "dead_letters" in tables else []
            conn.executemany(
                "INSERT INTO losses VALUES (?, 'dead_letter', ?)", [(e, n) for e, n in kept if n]
            )
            rest = total_dead - sum(n for _, n in kept)
            if rest > 0:
                conn.execute("INSERT INTO losses VALUES (?, 'dead_letter', ?)", (schema.GATEWAY_EQUIPMENT, rest))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('clock', 0.0)")
            conn.execute("UPDATE meta SET value = 2 WHERE key = 'format'")
        log.info("buffer_format_upgraded", path=str(self.path), was=1, now=FORMAT_VERSION)

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
        assert self.sidecar is not None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "format" in meta and int(meta["format"]) > FORMAT_VERSION:
            raise BufferFormatError(
                f"buffer {self.path} has format {meta['format']}; this emsedge reads {FORMAT_VERSION}"
            )
        count, total, max_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM records WHERE pinned = 0"
        ).fetchone()
        pinned_max = conn.execute("SELECT coalesce(max(seq), 0) FROM records WHERE pinned = 1").fetchone()[0]
        next_seq = max(int(meta.get("next_seq", 1)), max_seq + 1, pinned_max + 1)
        if "next_seq" not in meta and self.sidecar.reserved > next_seq:
            log.warning(
                "buffer_seq_continued_from_sidecar", path=str(self.path), next_seq=self.sidecar.reserved, fresh=fresh
            )
            next_seq = self.sidecar.reserved
        if meta.get("gateway") not in (None, self.gateway):
            log.warning("buffer_gateway_changed", path=str(self.path), was=meta["gateway"], now=self.gateway)
        self.base0 = float(meta.get("clock", 0.0) or 0.0)
        self.mono0 = self.clock()
        try:
            with _immediate_transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [("format", FORMAT_VERSION), ("gateway", self.gateway), ("next_seq", next_seq)],
                )
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('dead_letters_total', 0)")
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('clock', 0.0)")
        except sqlite3.OperationalError as exc:
            self.enter_fault(exc)
        self.next_seq = next_seq
        self.count = int(count)
        self.bytes = int(total)
        self.head = self._head(conn)
        self.losses = Counter(
            {(e, r): int(n) for e, r, n in conn.execute("SELECT equipment, reason, count FROM losses")}
        )
        dead = conn.execute("SELECT value FROM meta WHERE key='dead_letters_total'").fetchone()
        self.dead_letters = int(dead[0]) if dead else 0
        self.announcements = {}
        self.pinned_bytes = 0
        for seq, mid, size, note in conn.execute("SELECT seq, id, size, note FROM records WHERE pinned = 1"):
            self.announcements[seq] = Announcement.from_note(seq, mid, note)
            self.pinned_bytes += size
        self.open_announcement = max(self.announcements) if self.announcements else None
        acked: dict[str, set[int]] = {name: set() for name in self.outputs}
        for output, seq in conn.execute("SELECT output, seq FROM acks"):
            if output in acked:
                acked[output].add(seq)
        if self.open_announcement is not None and any(self.open_announcement in a for a in acked.values()):
            self.open_announcement = None
        mark = next_seq - 1
        for out in self.outputs.values():
            out.mark = mark
            out.acked = acked[out.name]
            out.backlog = self.count - sum(1 for s in out.acked if s not in self.announcements)
            out.backlog_cursor = 0
            out.live_cursor = mark
            out.leased = {}
        log.info(
            "buffer_opened", path=str(self.path), records=self.count, bytes=self.bytes, next_seq=next_seq,
            sync=self.config.sync, announcements=len(self.announcements),
        )

    @staticmethod
    def _head(conn: sqlite3.Connection) -> tuple[float, float] | None:
        row = conn.execute("SELECT created, age_base FROM records WHERE pinned = 0 ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def require_conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise BufferClosed("the buffer is not open")
        return self.conn

    def _reopen(self) -> None:
        """Replace the connection (after EROFS/EIO/read-only opens); state stays valid because it only ever
        reflects committed transactions."""
        fresh = self._open_db(check=False)
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        self.conn = fresh
        self.reopen_needed = False

    def _writable_conn(self) -> sqlite3.Connection:
        if self.reopen_needed or self.conn is None:
            self._reopen()
        return self.require_conn()

    def _ensure_reserved(self, upto: int) -> None:
        sidecar = self.sidecar
        assert sidecar is not None
        if upto >= sidecar.reserved:
            sidecar.reserve(upto + SEQ_RESERVE_STEP)

    # -- faults ----------------------------------------------------------------------------------------

    def enter_fault(self, exc: BaseException) -> None:
        text = error_text(exc)
        self.writable = False
        self.last_error = text
        low = isinstance(exc, LowDisk)
        kind = "low_disk" if low else "write_failed"
        if not low:
            self.reopen_needed = True  # a read-only or broken handle only heals with a new connection
        if self.fault == kind:
            return
        self.fault = kind
        if low:
            log.warning(
                "buffer_low_disk_backpressure", path=str(self.path), error=text,
                hint="appends wait until disk space returns; nothing is dropped",
            )
        else:
            log.error(
                "buffer_write_failed", path=str(self.path), error=text,
                hint="records are kept in memory (bounded) and retried; check disk space and permissions",
            )

    def leave_fault(self) -> None:
        self.writable = True
        if self.fault is not None:
            log.info("buffer_write_recovered", path=str(self.path), was=self.fault)
            self.fault = None

    # -- append ----------------------------------------------------------------------------------------

    def append(self, batch: Sequence[Sequence[schema.Record]]) -> list[AppendResult]:
        """Encode, insert, evict, commit: all or nothing. One result per inner sequence.

        Raises LowDisk, OSError or sqlite3.Error with nothing changed; the caller retries the same batch
        (the seqs are assigned again from the same `next_seq`, so a failed try leaves no gap).
        """
        rows: list[tuple[int, str, str, str, str, float, int, bytes, float]] = []
        refused: list[tuple[int, str, str]] = []
        unprocessable: list[tuple[int | None, str, str, int]] = []
        """(seq when nothing could be stored, equipment, ts, values replaced)."""
        refused_per: list[int] = []
        duplicates_per: list[int] = []
        duplicates: list[tuple[str, str]] = []
        """(equipment, id) of records suppressed because their own id was appended before."""
        known: set[str] | None = None
        """Own ids already in `emitted_ids` or earlier in this batch (looked up at the first own id)."""
        new_ids: list[tuple[str, float]] = []
        now = self.wall()
        base = self.now_base()
        seq = self.next_seq
        gateway = self.gateway
        limit = self.max_message_bytes
        encode = self.encode
        # Only this thread writes the file (the sidecar's flock keeps other processes out), so what the
        # look-up sees before BEGIN is what the transaction sees.
        conn = self._writable_conn()
        for records in batch:
            n_refused = n_duplicates = 0
            for given in records:
                record = given
                own = record.message_id
                if own is None:  # telemetry and most events: no look-up, no extra row
                    message_id = str(uuid.uuid4())
                else:
                    if known is None:
                        known = self._known_ids(conn, batch)
                    if own in known:
                        duplicates.append((record.equipment, own))
                        n_duplicates += 1
                        continue
                    known.add(own)
                    new_ids.append((own, base))
                    message_id = own
                try:
                    payload = encode(record, gateway=gateway, seq=seq, message_id=message_id)
                except Exception as exc:  # poison: never the writer's or the batch's end (see _replace_poison)
                    replaced = self._replace_poison(record, exc, seq, message_id)
                    if replaced is None:
                        unprocessable.append((seq, schema.safe_text(record.equipment), schema.safe_text(record.ts), 1))
                        n_refused += 1
                        seq += 1
                        continue
                    record, payload, n_bad = replaced
                    unprocessable.append((None, record.equipment, record.ts, n_bad))
                topic = self.topics.for_record(record)
                if limit is not None and len(payload) + len(topic) + PACKET_OVERHEAD > limit:
                    refused.append((seq, record.equipment, record.ts))
                    n_refused += 1
                else:
                    size = len(payload) + len(topic) + 36 + len(record.equipment) + len(record.ts) + ROW_OVERHEAD
                    rows.append((seq, message_id, topic, record.equipment, record.ts, now, size, payload, base))
                seq += 1
            refused_per.append(n_refused)
            duplicates_per.append(n_duplicates)
        incoming = sum(r[6] for r in rows)
        self._check_free_space(conn, incoming)
        self._ensure_reserved(seq + 1)
        delta = _Delta(next_seq=seq)
        with _immediate_transaction(conn):
            if self.config.max_age is not None:
                self._evict_head(conn, delta, older_than=base - self.config.max_age)
            conn.executemany(
                "INSERT INTO records(seq, id, topic, equipment, ts, created, attempts, size, payload, age_base) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                rows,
            )
            delta.added, delta.added_bytes = len(rows), incoming
            pruned = False
            if new_ids:
                conn.executemany("INSERT INTO emitted_ids(id, at) VALUES (?, ?)", new_ids)
                pruned = self._prune_ids_if_due(conn, base)
            total = self.bytes - sum(s for _, s, p in delta.deleted if not p) + incoming
            if total > self.config.max_bytes:
                self._evict_head(conn, delta, need=total - int(self.config.max_bytes))
            if refused:
                for _seq, equipment, _ts in refused:
                    delta.losses[(equipment, REASON_TOO_LARGE)] += 1
                self._announce(
                    conn, delta, seqs=[s for s, _, _ in refused], by_equipment=Counter(e for _, e, _ in refused),
                    reason=REASON_TOO_LARGE, first_ts=min(t for _, _, t in refused),
                    last_ts=max(t for _, _, t in refused),
                )
            if unprocessable:
                lost: Counter[str] = Counter()
                for _where, equipment, _ts, n in unprocessable:
                    lost[equipment] += n
                    delta.losses[(equipment, REASON_UNPROCESSABLE)] += n
                self._announce(
                    conn, delta, seqs=[s for s, _, _, _ in unprocessable if s is not None], by_equipment=lost,
                    reason=REASON_UNPROCESSABLE, first_ts=min(t for _, _, t, _ in unprocessable),
                    last_ts=max(t for _, _, t, _ in unprocessable),
                )
            self._write_meta(conn, delta)
            if delta.evicted.count:
                delta.head, delta.head_changed = self._head(conn), True
            elif self.head is None and rows:
                delta.head, delta.head_changed = (now, base), True
        self._apply(delta)
        if pruned:
            self.ids_pruned_at = base
        if duplicates:
            self.duplicates_suppressed += len(duplicates)
            log.debug(
                "buffer_duplicates_suppressed", records=len(duplicates),
                equipment=sorted({e for e, _ in duplicates}), ids=[i for _, i in duplicates][:20],
            )
        if refused:
            log.error(
                "buffer_refused_too_large", records=len(refused), max_message_bytes=limit,
                equipment=sorted({e for _, e, _ in refused}),
                hint="larger than the broker's maximum packet size; counted and announced as too_large",
            )
        report, self.unreported = self.unreported, Evicted()
        report.merge(delta.evicted)
        self._log_eviction(delta.evicted)
        results = []
        for i, records in enumerate(batch):
            accepted = len(records) - refused_per[i] - duplicates_per[i]
            results.append(report.result(accepted, refused_per[i], duplicates_per[i]) if i == 0 else AppendResult(
                accepted, 0, {}, None, None, refused_per[i], duplicates_per[i]))
        return results

    @staticmethod
    def _known_ids(conn: sqlite3.Connection, batch: Sequence[Sequence[schema.Record]]) -> set[str]:
        """The own ids of `batch` that `emitted_ids` already holds (one indexed look-up per chunk)."""
        own = list({r.message_id for records in batch for r in records if r.message_id is not None})
        known: set[str] = set()
        for i in range(0, len(own), _SQL_VARS):
            chunk = own[i : i + _SQL_VARS]
            known.update(
                row[0] for row in conn.execute(
                    f"SELECT id FROM emitted_ids WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
            )
        return known

    def _prune_ids_if_due(self, conn: sqlite3.Connection, now: float) -> bool:
        """Forget own ids older than ID_RETENTION, at most once per ID_PRUNE_INTERVAL (inside the caller's
        transaction). True when it pruned (the caller records the time after COMMIT)."""
        if self.ids_pruned_at is not None and now - self.ids_pruned_at < ID_PRUNE_INTERVAL:
            return False
        conn.execute("DELETE FROM emitted_ids WHERE at < ?", (now - ID_RETENTION,))
        return True

    def _replace_poison(
        self, record: schema.Record, error: Exception, seq: int, message_id: str
    ) -> tuple[schema.Record, bytes, int] | None:
        """A record `encode` raised on, in its place: bad readings or an `unprocessable` event (None when even
        that cannot be encoded; the record is then refused). Logged once per equipment, signal and reason."""
        try:
            replacement, problems = schema.unprocessable(record, error)
            payload = schema.encode(replacement, gateway=self.gateway, seq=seq, message_id=message_id)
            self.topics.for_record(replacement)
        except Exception as exc:
            problems = [("", schema.escape_raw(error_text(exc)), "")]
            replacement, payload = record, b""
        for signal, reason, raw in problems:
            key = (schema.safe_text(record.equipment, 100), signal, reason)
            first = key not in self.poison_logged
            if first and len(self.poison_logged) < 10_000:
                self.poison_logged.add(key)
            (log.error if first else log.debug)(
                "record_unprocessable", equipment=key[0], signal=signal, reason=reason, raw=raw,
                hint="replaced by a bad reading or an unprocessable event; counted and announced as unprocessable",
            )
        return None if not payload else (replacement, payload, len(problems))

    def _write_meta(self, conn: sqlite3.Connection, delta: _Delta) -> None:
        conn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (delta.next_seq,))
        conn.execute("UPDATE meta SET value=? WHERE key='clock'", (self.now_base(),))
        if delta.losses:
            conn.executemany(
                "INSERT INTO losses(equipment, reason, count) VALUES (?, ?, ?) "
                "ON CONFLICT(equipment, reason) DO UPDATE SET count = count + excluded.count",
                [(e, r, n) for (e, r), n in delta.losses.items()],
            )
        if delta.dead_letters:
            conn.execute(
                "UPDATE meta SET value = value + ? WHERE key='dead_letters_total'", (delta.dead_letters,)
            )

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
        raise LowDisk(free, floor)

    def _evict_head(
        self, conn: sqlite3.Connection, delta: _Delta, *, need: int = 0, older_than: float | None = None
    ) -> None:
        """Delete a prefix of unpinned `records` (oldest first): `need` bytes, or rows older than
        `older_than` on the buffer clock. Counts, and announces the seqs, in the same transaction."""
        freed = 0
        after = delta.evicted_seqs[-1] if delta.evicted_seqs else 0
        cut = 0
        done = False
        taken: list[tuple[int, str, str, int]] = []
        while not done:
            rows = conn.execute(
                "SELECT seq, equipment, ts, size, age_base FROM records WHERE seq > ? AND pinned = 0 "
                "ORDER BY seq LIMIT 1024",
                (after,),
            ).fetchall()
            if not rows:
                break
            for seq, equipment, ts, size, age_base in rows:
                if older_than is not None and age_base >= older_than:
                    done = True
                    break
                taken.append((seq, equipment, ts, size))
                freed += size
                cut = seq
                if older_than is None and freed >= need:
                    done = True
                    break
            after = rows[-1][0]
        if not cut:
            return
        conn.execute("DELETE FROM records WHERE seq <= ? AND pinned = 0", (cut,))
        if len(self.outputs) > 1:
            conn.execute("DELETE FROM acks WHERE seq <= ? AND seq NOT IN (SELECT seq FROM records)", (cut,))
        reason = REASON_MAX_AGE if older_than is not None else REASON_MAX_BYTES
        by_equipment: Counter[str] = Counter()
        for seq, equipment, ts, size in taken:
            delta.deleted.append((seq, size, 0))
            delta.evicted.add(equipment, ts)
            delta.evicted_seqs.append(seq)
            delta.losses[(equipment, reason)] += 1
            by_equipment[equipment] += 1
        self._announce(
            conn, delta, seqs=[t[0] for t in taken], by_equipment=by_equipment, reason=reason,
            first_ts=taken[0][2], last_ts=taken[-1][2],
        )

    # -- loss announcements ---------------------------------------------------------------------------

    def _announce(
        self,
        conn: sqlite3.Connection,
        delta: _Delta,
        *,
        seqs: list[int],
        by_equipment: Counter[str],
        reason: str,
        first_ts: str | None,
        last_ts: str | None,
    ) -> None:
        """Merge a loss into the open announcement (or open one) inside the caller's transaction."""
        open_seq = delta.open_announcement if delta.announcements else self.open_announcement
        current = delta.announcements.get(open_seq) if open_seq is not None else None
        if current is None and open_seq is not None and self._mergeable(open_seq):
            current = self.announcements[open_seq].copy()
        if current is None or len(current.ranges) >= ANNOUNCE_MAX_RANGES:
            seq = delta.next_seq
            delta.next_seq += 1
            current = Announcement(seq, str(uuid.uuid4()), self.now_base())
            fresh = True
        else:
            fresh = False
        n = sum(by_equipment.values())
        current.count += n
        for equipment, k in by_equipment.items():
            current.by_equipment[equipment] = current.by_equipment.get(equipment, 0) + k
        current.by_reason[reason] = current.by_reason.get(reason, 0) + n
        current.ranges = _merge_ranges(current.ranges, to_ranges(seqs))
        for ts in (first_ts, last_ts):
            if ts is not None:
                current.first_ts = ts if current.first_ts is None or ts < current.first_ts else current.first_ts
                current.last_ts = ts if current.last_ts is None or ts > current.last_ts else current.last_ts
        payload, topic = self._announcement_payload(current, delta)
        size = len(payload) + len(topic) + 36 + len(schema.GATEWAY_EQUIPMENT) + 24 + ROW_OVERHEAD
        if fresh:
            conn.execute(
                "INSERT INTO records(seq, id, topic, equipment, ts, created, attempts, size, payload, age_base, "
                "pinned, note) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 1, ?)",
                (current.seq, current.id, topic, schema.GATEWAY_EQUIPMENT, schema.utc_iso(self.wall()), self.wall(),
                 size, payload, self.now_base(), current.note()),
            )
        else:
            conn.execute(
                "UPDATE records SET payload = ?, size = ?, note = ? WHERE seq = ?",
                (payload, size, current.note(), current.seq),
            )
        delta.announcements[current.seq] = current
        delta.open_announcement = current.seq

    def _mergeable(self, seq: int) -> bool:
        return all(seq not in out.leased and seq not in out.acked for out in self.outputs.values())

    def _announcement_payload(self, a: Announcement, delta: _Delta) -> tuple[bytes, str]:
        losses = self.losses + delta.losses
        by_equipment: Counter[str] = Counter()
        for (equipment, _reason), n in losses.items():
            by_equipment[equipment] += n
        record = schema.event(
            schema.GATEWAY_EQUIPMENT, "gateway", schema.EventType.BUFFER_DROPPED, a.first_ts or schema.utc_iso(),
            count=a.count,
            by_equipment=dict(sorted(a.by_equipment.items())),
            first_ts=a.first_ts,
            last_ts=a.last_ts,
            reason="+".join(sorted(a.by_reason)),
            by_reason=dict(sorted(a.by_reason.items())),
            dropped_seqs=a.ranges,
            dropped_total=sum(losses.values()),
            dropped_total_by_equipment=dict(sorted(by_equipment.items())),
            max_bytes=int(self.config.max_bytes),
            max_age_s=self.config.max_age,
        )
        payload = schema.encode(record, gateway=self.gateway, seq=a.seq, message_id=a.id)
        return payload, self.topics.for_record(record)

    def count_loss(self, equipment: str, reason: str, count: int) -> None:
        """Data lost before it became a record (no seq): durable counter and announcement, one transaction."""
        if count <= 0:
            return
        conn = self._writable_conn()
        delta = _Delta(next_seq=self.next_seq)
        self._ensure_reserved(self.next_seq + 1)
        with _immediate_transaction(conn):
            delta.losses[(equipment, reason)] += count
            self._announce(
                conn, delta, seqs=[], by_equipment=Counter({equipment: count}), reason=reason, first_ts=None,
                last_ts=None,
            )
            self._write_meta(conn, delta)
        self._apply(delta)
        log.warning("data_lost", equipment=equipment, reason=reason, count=count)

    # -- applying committed changes --------------------------------------------------------------------

    def _apply(self, delta: _Delta) -> None:
        self.next_seq = delta.next_seq
        self.count += delta.added
        self.bytes += delta.added_bytes
        gone: set[int] = set()
        for seq, size, pinned in delta.deleted:
            gone.add(seq)
            if pinned:
                self.pinned_bytes -= size
                self.announcements.pop(seq, None)
            else:
                self.count -= 1
                self.bytes -= size
        for out in self.outputs.values():
            for seq, _size, pinned in delta.deleted:
                if not pinned and seq <= out.mark and seq not in out.acked:
                    out.backlog -= 1
            if gone:
                for seq in [s for s in out.leased if s in gone]:
                    del out.leased[seq]
                out.acked -= gone
        self.announcements.update(delta.announcements)
        if delta.announcements:
            self.open_announcement = delta.open_announcement
            self._refresh_pinned_bytes()
        if self.open_announcement in gone:
            self.open_announcement = None
        self.losses.update(delta.losses)
        self.dead_letters += delta.dead_letters
        if delta.head_changed:
            self.head = delta.head
        self.leave_fault()

    def _refresh_pinned_bytes(self) -> None:
        conn = self.conn
        if conn is not None:
            self.pinned_bytes = int(
                conn.execute("SELECT coalesce(sum(size), 0) FROM records WHERE pinned = 1").fetchone()[0]
            )

    def _log_eviction(self, evicted: Evicted) -> None:
        """One warning when eviction starts, then at most one summary per EVICTION_LOG_INTERVAL."""
        if not evicted.count:
            return
        self.evict_log_pending.merge(evicted)
        now = self.clock()
        if self.evict_logged_at is not None and now - self.evict_logged_at < EVICTION_LOG_INTERVAL:
            return
        pending, self.evict_log_pending = self.evict_log_pending, Evicted()
        self.evict_logged_at = now
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
            hint="the buffer is full or records are too old; the oldest records are dropped, counted and announced",
        )

    # -- housekeeping ----------------------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Idle work: retry settles that could not be written, evict by age. Errors are kept in the fault
        state (logged once) and retried next round."""
        if self.unsettled:
            todo, self.unsettled = self.unsettled, []
            for lease, acked, dead in todo:
                self._settle_txn(lease, acked, [], dead)
        now = self.now_base()
        if self.ids_pruned_at is None or now - self.ids_pruned_at >= ID_PRUNE_INTERVAL:
            try:
                conn = self._writable_conn()
                with _immediate_transaction(conn):
                    self._prune_ids_if_due(conn, now)
            except (sqlite3.Error, OSError) as exc:
                self.enter_fault(exc)
                return
            self.ids_pruned_at = now
        if self.config.max_age is None or self.head is None:
            return
        older_than = self.now_base() - self.config.max_age
        if self.head[1] >= older_than:
            return
        try:
            conn = self._writable_conn()
            delta = _Delta(next_seq=self.next_seq)
            self._ensure_reserved(self.next_seq + 1)
            with _immediate_transaction(conn):
                self._evict_head(conn, delta, older_than=older_than)
                self._write_meta(conn, delta)
                delta.head, delta.head_changed = self._head(conn), True
        except (sqlite3.Error, OSError) as exc:
            self.enter_fault(exc)
            return
        self._apply(delta)
        self.unreported.merge(delta.evicted)
        self._log_eviction(delta.evicted)

    # -- leasing ---------------------------------------------------------------------------------------

    def set_max_message_bytes(self, limit: int | None) -> None:
        self.max_message_bytes = limit

    def begin_replay(self, output: str) -> None:
        """The output's link (re)connected: everything appended so far is its backlog from now on."""
        out = self.outputs[output]
        out.mark = self.next_seq - 1
        out.backlog = self.count - sum(1 for s in out.acked if s not in self.announcements)
        out.live_cursor = max(out.live_cursor, out.mark)
        out.announce_now = True

    def announce_now(self, output: str) -> None:
        self.outputs[output].announce_now = True

    def lease(self, output: str, max_count: int, max_bytes: int | None) -> Lease:
        """Up to `max_count` records (and at most `max_bytes` of payload, but at least one) not leased by
        or acked by `output`; due announcements first, then the replay policy of the package docstring."""
        out = self.outputs[output]
        if max_count <= 0:
            return Lease(0, output, [])
        conn = self.require_conn()
        budget = math.inf if max_bytes is None else max_bytes
        skip = set(out.leased) | out.acked
        picked: list[StoredMessage] = []
        used = 0
        now = self.now_base()
        for seq in sorted(self.announcements):
            a = self.announcements[seq]
            if seq in skip or not (out.announce_now or now - a.opened >= ANNOUNCE_INTERVAL):
                continue
            row = conn.execute(
                "SELECT seq, id, topic, payload, equipment, created, attempts FROM records WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                continue
            picked.append(StoredMessage(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6], False, True))
            used += len(row[3])
            if len(picked) >= max_count:
                break
        if picked:
            out.announce_now = False
            if self.open_announcement in {m.seq for m in picked}:
                self.open_announcement = None
        mark = out.mark
        lcur = max(out.live_cursor, mark)
        bcur = out.backlog_cursor
        def scan(cursor: int, upto: int | None, n: int, used: int, *, replayed: bool) -> tuple[
            list[StoredMessage], int, int
        ]:
            return self._scan(
                conn, cursor=cursor, upto=upto, n=n, budget=budget, used=used, skip=skip, replayed=replayed,
                already=picked,
            )

        if out.bucket is None:
            got, bcur, used = scan(bcur, mark, max_count - len(picked), used, replayed=True)
            picked += got
            if len(picked) < max_count and used < budget:
                got, lcur, used = scan(lcur, None, max_count - len(picked), used, replayed=False)
                picked += got
        else:
            got, lcur, used = scan(lcur, None, max_count - len(picked), used, replayed=False)
            picked += got
            allowance = min(max_count - len(picked), math.floor(out.bucket.available()))
            if allowance > 0 and used < budget:
                got, bcur, used = scan(bcur, mark, allowance, used, replayed=True)
                out.bucket.take(len(got))
                picked += got
        out.backlog_cursor, out.live_cursor = bcur, lcur
        self.lease_ids += 1
        lease_id = self.lease_ids
        for m in picked:
            out.leased[m.seq] = (lease_id, len(m.payload))
        return Lease(lease_id, output, picked)

    @staticmethod
    def _scan(
        conn: sqlite3.Connection,
        *,
        cursor: int,
        upto: int | None,
        n: int,
        budget: float,
        used: int,
        skip: set[int],
        replayed: bool,
        already: list[StoredMessage],
    ) -> tuple[list[StoredMessage], int, int]:
        """Oldest first from seq > cursor (and <= upto), skipping leased/acked rows, within `n` and the
        byte `budget` (at least one message per lease). Returns (taken, new cursor, bytes used).

        The new cursor is the last row examined and taken or skipped: everything at or below it in this
        range is now leased, acked by this output or gone, which is the invariant the cursor stands for.
        """
        out: list[StoredMessage] = []
        if n <= 0:
            return out, cursor, used
        sql = (
            "SELECT seq, id, topic, payload, equipment, created, attempts FROM records "
            "WHERE seq > ? " + ("AND seq <= ? " if upto is not None else "") + "AND pinned = 0 ORDER BY seq LIMIT ?"
        )
        mark_replayed = schema.mark_replayed
        full = False
        # Rows are read in chunks sized to the budget left (estimated from the rows read so far), so a lease of
        # large payloads never holds much more than its byte bound in memory.
        chunk = 512 if budget == math.inf else 4
        read_bytes = read_rows = 0
        while len(out) < n and not full:
            want = n - len(out) + min(len(skip), 4096)
            params: tuple[int, ...] = (cursor, upto, want) if upto is not None else (cursor, want)
            rows_cursor = conn.execute(sql, params)
            seen = 0
            while not full and len(out) < n:
                rows = rows_cursor.fetchmany(chunk)
                if not rows:
                    break
                seen += len(rows)
                read_rows += len(rows)
                read_bytes += sum(len(r[3]) for r in rows)
                if budget != math.inf:
                    left = max(budget - used, 0)
                    chunk = max(1, min(512, int(left * read_rows / max(read_bytes, 1)) + 1))
                for seq, mid, topic, payload, equipment, created, attempts in rows:
                    if seq in skip:
                        cursor = seq
                        continue
                    body = mark_replayed(payload) if replayed else bytes(payload)
                    if used + len(body) > budget and (out or already):
                        full = True
                        break
                    cursor = seq
                    out.append(StoredMessage(seq, mid, topic, body, equipment, created, attempts, replayed))
                    used += len(body)
                    if len(out) >= n:
                        break
            rows_cursor.close()
            if seen < want and len(out) < n:
                break
        return out, cursor, used

    # -- settle ----------------------------------------------------------------------------------------

    def settle(self, lease: Lease, acked: Sequence[int], retry: Sequence[int], dead: Sequence[tuple[int, str]]) -> None:
        """Delivered, to be re-sent, or refused for good: one transaction for the whole lease."""
        out = self.outputs[lease.output]
        mine = {s for s, (lid, _) in out.leased.items() if lid == lease.id}
        ok = sorted({s for s in acked if s in mine})
        again = sorted({s for s in retry if s in mine})
        poison = [(s, r) for s, r in dead if s in mine and s not in self.announcements]
        # An announcement is never dead-lettered: it is what tells MES about loss. It is re-sent.
        again = sorted({*again, *(s for s, _ in dead if s in mine and s in self.announcements)})
        self._settle_txn(lease, ok, again, poison)

    def _settle_txn(
        self, lease: Lease, ok: list[int], again: list[int], poison: list[tuple[int, str]]
    ) -> None:
        out = self.outputs[lease.output]
        if not (ok or again or poison):
            return
        others = [o for o in self.outputs.values() if o is not out]
        if others:
            delete = [s for s in ok if all(s in o.acked for o in others)]
            deleting = set(delete)
            keep = [s for s in ok if s not in deleting]
        else:
            delete, keep = ok, []
        delta = _Delta(next_seq=self.next_seq)
        try:
            conn = self._writable_conn()
            if poison:
                self._ensure_reserved(self.next_seq + 1)
            # A delete need not reach the platter: losing it in a power cut only re-sends delivered
            # records (at-least-once). The next append's fsync persists it anyway (WAL order).
            relaxed = self.config.sync == "full" and not poison
            if relaxed:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with _immediate_transaction(conn):
                    for chunk in _chunks(delete):
                        marks = _placeholders(len(chunk))
                        delta.deleted += conn.execute(
                            f"DELETE FROM records WHERE seq IN ({marks}) RETURNING seq, size, pinned", chunk
                        ).fetchall()
                        if others:
                            conn.execute(f"DELETE FROM acks WHERE seq IN ({marks})", chunk)
                    if keep:
                        conn.executemany(
                            "INSERT OR IGNORE INTO acks(output, seq) VALUES (?, ?)", [(out.name, s) for s in keep]
                        )
                    for chunk in _chunks(again):
                        conn.execute(
                            f"UPDATE records SET attempts = attempts + 1 WHERE seq IN ({_placeholders(len(chunk))})",
                            chunk,
                        )
                    if poison:
                        self._dead_letter(conn, delta, poison)
                    if delta.deleted:
                        delta.head, delta.head_changed = self._head(conn), True
                    if poison:
                        self._write_meta(conn, delta)
            finally:
                if relaxed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, OSError) as exc:
            self.reopen_needed = True
            # Delivered and poisoned records stay out of circulation (still leased) until the write works;
            # after a crash they would be sent again (at-least-once). Retries go back to the queue.
            self.unsettled.append((lease, ok, poison))
            self._release(out, again)
            if not self.settle_fault_logged:
                self.settle_fault_logged = True
                log.error(
                    "buffer_ack_failed", path=str(self.path), error=error_text(exc),
                    hint="delivered records stay on disk until the delete succeeds; retried when idle",
                )
            return
        if self.settle_fault_logged and not self.unsettled:
            self.settle_fault_logged = False
            log.info("buffer_ack_recovered", path=str(self.path))
        for s in keep:
            out.acked.add(s)
            out.leased.pop(s, None)
            if s <= out.mark and s not in self.announcements:
                out.backlog -= 1
        self._apply(delta)
        for s in ok:
            out.leased.pop(s, None)
        self._release(out, again)
        if poison:
            log.error(
                "buffer_dead_lettered",
                records=len(poison),
                seqs=[s for s, _ in poison][:20],
                equipment=sorted({e for (e, r) in delta.losses if r == REASON_DEAD_LETTER}),
                reason=poison[0][1],
                output=out.name,
                path=str(self.path),
            )

    def _dead_letter(self, conn: sqlite3.Connection, delta: _Delta, poison: list[tuple[int, str]]) -> None:
        now = self.wall()
        moved: list[tuple[int, int, str, str]] = []
        for seq, reason in poison:
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters "
                "SELECT seq, id, topic, equipment, ts, created, attempts, size, payload, ?, ? "
                "FROM records WHERE seq = ? AND pinned = 0",
                (reason, now, seq),
            )
            moved += conn.execute(
                "DELETE FROM records WHERE seq = ? AND pinned = 0 RETURNING seq, size, equipment, ts", (seq,)
            ).fetchall()
        conn.execute(
            "DELETE FROM dead_letters WHERE seq NOT IN (SELECT seq FROM dead_letters ORDER BY seq DESC LIMIT ?)",
            (DEAD_LETTER_KEEP,),
        )
        if not moved:
            return
        if len(self.outputs) > 1:
            conn.executemany("DELETE FROM acks WHERE seq = ?", [(s,) for s, _, _, _ in moved])
        delta.dead_letters += len(moved)
        by_equipment: Counter[str] = Counter()
        for seq, size, equipment, _ts in moved:
            delta.deleted.append((seq, size, 0))
            delta.losses[(equipment, REASON_DEAD_LETTER)] += 1
            by_equipment[equipment] += 1
        tss = sorted(t for _, _, _, t in moved)
        self._announce(
            conn, delta, seqs=[m[0] for m in moved], by_equipment=by_equipment, reason=REASON_DEAD_LETTER,
            first_ts=tss[0], last_ts=tss[-1],
        )

    def _release(self, out: _Output, seqs: list[int]) -> None:
        """Back to the queue in seq order: the cursors step back so the next lease finds them."""
        if not seqs:
            return
        for s in seqs:
            out.leased.pop(s, None)
        backlog = [s for s in seqs if s <= out.mark and s not in self.announcements]
        live = [s for s in seqs if s > out.mark and s not in self.announcements]
        if backlog:
            out.backlog_cursor = min(out.backlog_cursor, backlog[0] - 1)
        if live:
            out.live_cursor = min(out.live_cursor, live[0] - 1)

    # -- observation -----------------------------------------------------------------------------------

    def snapshot(self, busy_since: float | None, queued: int) -> BufferStats:
        by_equipment: dict[str, int] = {}
        evicted_by_equipment: dict[str, int] = {}
        losses: dict[str, dict[str, int]] = {}
        for (equipment, reason), n in self.losses.items():
            by_equipment[equipment] = by_equipment.get(equipment, 0) + n
            losses.setdefault(equipment, {})[reason] = n
            if reason in EVICTION_REASONS:
                evicted_by_equipment[equipment] = evicted_by_equipment.get(equipment, 0) + n
        outputs: dict[str, OutputStats] = {}
        now = self.now_base()
        for out in self.outputs.values():
            leased_records = sum(1 for s in out.leased if s not in self.announcements)
            leased_backlog = sum(1 for s in out.leased if s <= out.mark and s not in self.announcements)
            acked_records = sum(1 for s in out.acked if s not in self.announcements)
            unleased = self.count - leased_records - acked_records
            backlog_free = max(out.backlog - leased_backlog, 0)
            due = 0
            not_due: list[float] = []
            for s, a in self.announcements.items():
                if s in out.leased or s in out.acked:
                    continue
                if out.announce_now or now - a.opened >= ANNOUNCE_INTERVAL:
                    due += 1
                else:
                    not_due.append(a.opened + ANNOUNCE_INTERVAL - now)
            bucket = out.bucket
            outputs[out.name] = OutputStats(
                leased=len(out.leased),
                leased_bytes=sum(b for _, b in out.leased.values()),
                backlog=out.backlog,
                unleased_live=max(unleased - backlog_free, 0),
                unleased_backlog=backlog_free,
                announcements_due=due,
                replay_tokens=None if bucket is None else bucket.tokens,
                tokens_at=0.0 if bucket is None else bucket.stamp,
                next_announcement_in=min(not_due) if not_due else None,
                observed_at=self.clock(),
            )
        first = next(iter(self.outputs.values()))
        return BufferStats(
            count=self.count,
            bytes=self.bytes,
            oldest_created=None if self.head is None else self.head[0],
            next_seq=self.next_seq,
            evicted_total=sum(evicted_by_equipment.values()),
            evicted_by_equipment=evicted_by_equipment,
            dead_letters=self.dead_letters,
            leased=outputs[first.name].leased,
            backlog=first.backlog,
            writable=self.writable,
            last_error=self.last_error,
            queued=queued,
            dropped_total=sum(by_equipment.values()),
            dropped_by_equipment=by_equipment,
            losses=losses,
            announcements_pending=len(self.announcements),
            oldest_age_base=None if self.head is None else self.head[1],
            base_offset=self.base0 - self.mono0,
            writer_busy_since=busy_since,
            outputs=outputs,
            duplicates_suppressed=self.duplicates_suppressed,
        )
