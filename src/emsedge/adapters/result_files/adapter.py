"""The `result_files` adapter: a push-style session that turns tester result files into `unit_tested` events.

One cycle (`scan_once`) takes every settled file, oldest first, one at a time:

1. a file whose (name, size, mtime) or content hash is in the ledger was handled before (a crash after
   the ledger write, or an identical file dropped again): it is only moved, nothing is emitted;
2. it is hashed in chunks and, when not larger than `max_file_size`, read and parsed (in a worker thread);
3. its events, one `unit_tested` per board, go to `ctx.emit()` in one call, which returns only once the
   buffer made them durable; each carries a deterministic message id (`model.record_id`), so a crash
   before step 4 re-emits them with the same ids and the buffer suppresses the copy (sent once);
4. only then the ledger records it, and then it moves to `archive` (or stays, when none is configured).

A file that cannot be parsed (or is too large, or a plug-in parser crashed on it) becomes one
`file_rejected` event (file, reason, line), is recorded and moves to `error` with `<name>.reason.txt`
beside it; the adapter goes on with the next file. The gateway never deletes a file: a move that fails
(archive share gone) is retried on the next scan.

The session (`session(ctx)`, run by the supervisor) opens the ledger, scans once and calls
`ctx.connected()` when the folder is reachable; a scanned folder that vanishes (a share unmounted) ends the
session with `AdapterError(transient=True)`. The supervisor then emits `connection_lost` once, backs off and
starts a new session, which emits `connection_restored` when the folder is back: recovery without restart.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import anyio

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.result_files import parsers
from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.adapters.result_files.ledger import Ledger, LedgerEntry
from emsedge.adapters.result_files.model import SourceFile, TestedBoard, event_fields, record_id, to_utc
from emsedge.adapters.result_files.scanner import Candidate, FileChanged, FileContent, Scanner, read
from emsedge.errors import AdapterError
from emsedge.schema import EventType, Record, utc_iso
from emsedge.supervisor import FileStats

FILE_REJECTED = EventType.FILE_REJECTED
"""Event type of a result file that could not be turned into events."""


ResultFilesStats = FileStats
"""Counters read by /metrics: files processed, rejected, duplicates, boards emitted, parse time."""


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    line: int | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What one file turned out to be, before anything is emitted or moved."""

    candidate: Candidate
    kind: Literal["known", "changed", "duplicate", "rejected", "boards"]
    sha256: str = ""
    size: int = 0
    earlier: LedgerEntry | None = None
    rejection: Rejection | None = None
    boards: list[TestedBoard] | None = None


BATCH_FILES = 64
PRUNE_EVERY_S = 24 * 3600.0
BATCH_BYTES = 8 << 20


class ResultFilesAdapter:
    """One equipment's result folder. `session()` runs until cancelled; `scan_once()` is one cycle."""

    def __init__(
        self,
        config: ResultFilesEquipment,
        ctx: AdapterContext,
        *,
        ledger_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.tz = ZoneInfo(config.timezone)
        self.parser = parsers.parser_for(config.format)
        self.options = config.parse_options()
        self.ledger_path = ledger_path or default_ledger_path(config, ctx)
        self.ledger: Ledger | None = None
        self.scanner = Scanner(
            config.path,
            config.patterns,
            settle=config.settle,
            recursive=config.recursive,
            exclude=tuple(p for p in (config.archive, config.error) if p is not None),
            clock=clock,
        )
        self.stats = ctx.health.files or FileStats()  # on the health record: kept across a reload
        ctx.health.files = self.stats
        self.clock = clock
        self._pruned_at = clock()
        self._moves_failing = False
        self._unreadable: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> ResultFilesAdapter:
        self.ledger = await anyio.to_thread.run_sync(Ledger, self.ledger_path)
        await self._prune()
        return self

    async def _prune(self) -> None:
        self._pruned_at = self.clock()
        pruned = await anyio.to_thread.run_sync(self._ledger().prune, self.config.ledger_retention)
        if pruned:
            self.ctx.log.info("ledger entries expired", count=pruned, retention_s=self.config.ledger_retention)

    async def __aexit__(self, *exc: object) -> None:
        if self.ledger is not None:
            ledger, self.ledger = self.ledger, None
            await anyio.to_thread.run_sync(ledger.close)

    async def session(self, ctx: AdapterContext) -> None:
        """One session: until cancelled, or until the folder is unreachable (`AdapterError`, transient)."""
        async with self:
            candidates = await self._scan()
            await ctx.connected()
            while True:
                await self._handle(candidates)
                if self.clock() - self._pruned_at > PRUNE_EVERY_S:
                    await self._prune()
                await anyio.sleep(self.config.poll_interval)
                candidates = await self._scan()

    def offline_records(self, reason: str) -> Sequence[Record]:
        """A folder has no signals: `connection_lost` carries no readings."""
        return []

    # -- one cycle --------------------------------------------------------------------------------

    async def scan_once(self) -> int:
        """Handle every settled file once; returns how many files were handled.
        Raises `AdapterError` (transient) when the folder is not reachable."""
        return await self._handle(await self._scan())

    async def _scan(self) -> list[Candidate]:
        try:
            return await anyio.to_thread.run_sync(self.scanner.scan)
        except OSError as exc:
            raise AdapterError(
                f"folder {self.config.path} is not reachable: {exc.strerror or exc}", transient=True
            ) from exc

    async def _handle(self, candidates: list[Candidate]) -> int:
        """Prepare files one by one; commit parsed ones in batches (one emit, one ledger transaction),
        so a backlog costs two syncs per batch instead of two per file. Memory per batch is bounded by
        `BATCH_FILES` and `BATCH_BYTES` (file bytes are dropped once parsed)."""
        handled = 0
        ready: list[_Prepared] = []
        hashes: set[str] = set()
        budget = BATCH_BYTES
        for candidate in candidates:
            prepared = await anyio.to_thread.run_sync(self._prepare, candidate)
            if prepared.kind == "changed":
                self.scanner.retry(candidate)
            elif prepared.kind in ("known", "duplicate"):
                await self._settle_earlier(prepared)
                handled += 1
            elif prepared.sha256 in hashes:
                self.scanner.retry(candidate)  # identical to a file of this batch: recognised next scan
            else:
                hashes.add(prepared.sha256)
                ready.append(prepared)
                budget -= prepared.size
                if len(ready) >= BATCH_FILES or budget <= 0:
                    handled += await self._commit(ready)
                    ready, budget = [], BATCH_BYTES
                    hashes.clear()
        if ready:
            handled += await self._commit(ready)
        return handled

    def _prepare(self, candidate: Candidate) -> _Prepared:
        """Worker thread: ledger look-ups, chunked read and hash, parse. Never raises for a file's content."""
        ledger = self._ledger()
        known = ledger.by_identity(candidate.name, candidate.size, candidate.mtime_ns)
        if known is not None:  # handled before a crash (ledger written, not moved yet), or left in place
            return _Prepared(candidate, "known", known.sha256, candidate.size, earlier=known)
        try:
            content = read(candidate, int(self.config.max_file_size))
        except FileChanged:
            return _Prepared(candidate, "changed")
        except OSError as exc:
            if candidate.name not in self._unreadable:  # once per file, not once per scan
                self._unreadable.add(candidate.name)
                self.ctx.log.warning("cannot read result file; retrying", file=candidate.name, error=str(exc))
            return _Prepared(candidate, "changed")
        self._unreadable.discard(candidate.name)
        earlier = ledger.by_hash(content.sha256)
        if earlier is not None:
            return _Prepared(candidate, "duplicate", content.sha256, content.size, earlier=earlier)
        outcome = self._parse(candidate, content)
        if isinstance(outcome, Rejection):
            return _Prepared(candidate, "rejected", content.sha256, content.size, rejection=outcome)
        return _Prepared(candidate, "boards", content.sha256, content.size, boards=outcome)

    async def _settle_earlier(self, prepared: _Prepared) -> None:
        """A file whose content was handled before: record a re-drop, then move it where the first went."""
        candidate, earlier = prepared.candidate, prepared.earlier
        assert earlier is not None
        if prepared.kind == "duplicate":
            self.ctx.log.info("identical file handled before", file=candidate.name, first=earlier.name,
                              outcome=earlier.outcome)
            entry = LedgerEntry(candidate.name, candidate.size, candidate.mtime_ns, prepared.sha256, "duplicate", 0,
                                earlier.reason)
            await anyio.to_thread.run_sync(self._ledger().record, [entry])
            self.stats.files_duplicate += 1
        if earlier.rejected:
            reason = earlier.reason or "rejected earlier"
            if prepared.kind == "duplicate":
                reason = f"identical to rejected {earlier.name}: {reason}"
            await self._move_rejected(candidate, Rejection(reason))
        else:
            await self._move_processed(candidate)

    async def _commit(self, batch: list[_Prepared]) -> int:
        records: list[Record] = []
        entries: list[LedgerEntry] = []
        for p in batch:
            c = p.candidate
            source = SourceFile(c.name, p.sha256, p.size)
            if p.rejection is not None:
                records.append(self._rejected_event(source, p.rejection))
                entries.append(LedgerEntry(c.name, c.size, c.mtime_ns, p.sha256, "rejected", 0, p.rejection.reason))
            else:
                boards = p.boards or []
                records.extend(self._tested_event(board, source, i) for i, board in enumerate(boards))
                entries.append(LedgerEntry(c.name, c.size, c.mtime_ns, p.sha256, "processed", len(boards)))
        await self.ctx.emit(records)  # returns once the buffer made every event of the batch durable
        await anyio.to_thread.run_sync(self._ledger().record, entries)
        for p in batch:
            if p.rejection is not None:
                self.stats.files_rejected += 1
                self.ctx.log.warning("result file rejected", file=p.candidate.name, reason=p.rejection.reason,
                                     line=p.rejection.line)
                await self._move_rejected(p.candidate, p.rejection)
            else:
                self.stats.files_processed += 1
                self.stats.boards_emitted += len(p.boards or [])
                await self._move_processed(p.candidate)
        return len(batch)

    # -- parts ------------------------------------------------------------------------------------

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise RuntimeError("the adapter is not entered (use `async with` or session())")
        return self.ledger

    def _parse(self, candidate: Candidate, content: FileContent) -> list[TestedBoard] | Rejection:
        if content.data is None:
            return Rejection(
                f"file is {content.size} bytes, larger than max_file_size {int(self.config.max_file_size)}"
            )
        started = time.perf_counter()
        try:
            boards = self.parser(content.data, self.options)
        except parsers.ParseError as exc:
            return Rejection(exc.reason, exc.line)
        except Exception as exc:  # a plug-in parser's bug must not stop the folder
            self.ctx.log.exception("result parser crashed", file=candidate.name, format=self.config.format)
            return Rejection(f"parser {self.config.format} crashed: {type(exc).__name__}: {exc}")
        finally:
            self.stats.parse_seconds += time.perf_counter() - started
            self.stats.parse_count += 1
        if not boards:
            return Rejection("the parser found no board in the file")
        return boards

    def _tested_event(self, board: TestedBoard, source: SourceFile, index: int) -> Record:
        fields = event_fields(board, source, index, self.tz)
        if self.config.test_method is not None:
            fields["test_method"] = self.config.test_method
        ts = to_utc(board.ended or board.started, self.tz) or utc_iso()
        record = self.ctx.event(EventType.UNIT_TESTED, ts, **fields)
        record.message_id = self._record_id(source, EventType.UNIT_TESTED, index)
        return record

    def _rejected_event(self, source: SourceFile, rejection: Rejection) -> Record:
        record = self.ctx.event(
            FILE_REJECTED, file=source.file, reason=rejection.reason, line=rejection.line, sha256=source.sha256,
            size=source.size,
        )
        record.message_id = self._record_id(source, FILE_REJECTED)
        return record

    def _record_id(self, source: SourceFile, kind: str, index: int = 0) -> str:
        return record_id(self.ctx.gateway or "", self.config.id, source.sha256, kind, index)

    async def _move_processed(self, candidate: Candidate) -> None:
        if self.config.archive is None:
            self.scanner.done(candidate)
            return
        await self._move(candidate, self.config.archive, None)

    async def _move_rejected(self, candidate: Candidate, rejection: Rejection) -> None:
        if self.config.error is None:
            self.scanner.done(candidate)
            return
        where = f" (line {rejection.line})" if rejection.line is not None else ""
        await self._move(candidate, self.config.error, f"{rejection.reason}{where}\n")

    async def _move(self, candidate: Candidate, folder: Path, reason: str | None) -> None:
        try:
            moved = await anyio.to_thread.run_sync(move_into, candidate.path, folder, candidate.name, reason)
        except OSError as exc:
            self.stats.move_errors += 1
            if not self._moves_failing:  # log the state change, not every retry
                self._moves_failing = True
                self.ctx.log.warning("cannot move result files; retrying every scan", file=candidate.name,
                                     to=str(folder), error=str(exc))
            self.scanner.retry(candidate)
            return
        if self._moves_failing:
            self._moves_failing = False
            self.ctx.log.info("result files move again", to=str(folder))
        self.scanner.done(candidate)
        self.ctx.log.debug("result file moved", file=candidate.name, to=str(moved))


def move_into(source: Path, folder: Path, name: str, reason: str | None = None) -> Path:
    """Move `source` to `folder/name` (sub-folders kept), never overwriting: a taken name gets `.1`, `.2`...
    With `reason`, `<name>.reason.txt` is written (and fsynced) beside it first. Never deletes a file
    except the source of a completed cross-device copy (which is what a move is)."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while target.exists() or (reason is not None and Path(f"{target}.reason.txt").exists()):
        n += 1
        target = folder / f"{name}.{n}"
    if reason is not None:
        with open(f"{target}.reason.txt", "w", encoding="utf-8") as f:
            f.write(reason)
            f.flush()
            os.fsync(f.fileno())
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # the archive is on another file system: copy, sync, then unlink
            raise
        shutil.copy2(source, target)
        with open(target, "rb") as f:
            os.fsync(f.fileno())
        os.unlink(source)
    return target


def default_ledger_path(config: ResultFilesEquipment, ctx: AdapterContext) -> Path:
    """`ledger:` from the config, else `<state dir>/result_files-<equipment id>.ledger`, where the runtime's
    state dir is the buffer's folder (so the ledger lives and is backed up with the buffer)."""
    if config.ledger is not None:
        return config.ledger
    if ctx.state_dir is None:
        raise ValueError(f"equipment {config.id}: no ledger path (set `ledger:`; the runtime passes a state dir)")
    return ctx.state_dir / f"result_files-{config.id}.ledger"


__all__ = ["FILE_REJECTED", "ResultFilesAdapter", "ResultFilesStats", "default_ledger_path", "move_into"]
