"""`Buffer`: the async face of the store. One owner thread runs every command; the loop reads snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from emsedge import schema
from emsedge.buffer.errors import BufferClosed, BufferOwnerDied
from emsedge.buffer.model import AppendResult, BufferStats, Lease
from emsedge.buffer.store import LowDisk, Store, error_text
from emsedge.config import BufferConfig
from emsedge.errors import BufferError
from emsedge.topics import Topics

log = structlog.get_logger("emsedge.buffer")

QUEUE_APPENDS = 256
"""Append calls the writer queue holds before `append` waits (back-pressure)."""
HOUSEKEEPING_INTERVAL = 1.0
RETRY_MAX_DELAY = 1.0

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Pending:
    records: Sequence[schema.Record]
    done: anyio.Event
    result: AppendResult | None = None
    error: BaseException | None = None
    taken: bool = False
    """The writer took it off the queue: it will be committed (or failed at shutdown)."""
    abandoned: bool = False
    """The producer was cancelled before the writer took it: the writer skips it."""


@dataclass(slots=True, eq=False)
class _Command(Generic[T]):
    fn: Callable[[], T]
    done: anyio.Event | None
    result: T | None = None
    error: BaseException | None = None


def _loop_caller() -> Callable[[Callable[[], None]], None]:
    """A thread-safe, non-blocking "run this on the event loop soon" for the running loop.

    The owner thread must not wait for the loop to take its reply (anyio.from_thread.run_sync would): under
    load that wait costs a second thread wake-up per command. On asyncio it uses the loop's
    `call_soon_threadsafe`; on another backend (trio) anyio's blocking call.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio)
        loop = None
    if loop is not None:

        def soon(fn: Callable[[], None]) -> None:
            loop.call_soon_threadsafe(fn)

        return soon
    token = anyio.lowlevel.current_token()

    def blocking(fn: Callable[[], None]) -> None:
        anyio.from_thread.run_sync(fn, token=token)

    return blocking


class _Owner:
    """The one thread that touches the `Store`: runs commands in order, publishes a snapshot after each."""

    def __init__(self, store: Store, clock: Callable[[], float], finished: Callable[[_Command[object]], None]) -> None:
        self.store = store
        self.clock = clock
        self.finished = finished
        self.queue: queue.SimpleQueue[_Command[object] | None] = queue.SimpleQueue()
        self.snapshot = store.snapshot(None, 0)
        self.call_soon = _loop_caller()
        self.thread = threading.Thread(target=self._main, name="emsedge-buffer-owner", daemon=True)
        self.died: BaseException | None = None

    def start(self) -> None:
        self.thread.start()

    def submit(self, command: _Command[object]) -> None:
        if self.died is not None:
            raise BufferOwnerDied(f"the buffer owner thread died: {error_text(self.died)}")
        self.queue.put(command)

    def stop(self) -> None:
        self.queue.put(None)

    def _main(self) -> None:
        try:
            while True:
                command = self.queue.get()
                if command is None:
                    return
                self.snapshot = dataclasses.replace(self.snapshot, writer_busy_since=self.clock())
                try:
                    command.result = command.fn()
                except BaseException as exc:  # handed to the caller on the loop
                    command.error = exc
                self.snapshot = self.store.snapshot(None, 0)
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    self.call_soon(functools.partial(self.finished, command))
        except BaseException as exc:  # pragma: no cover - a bug in the owner loop itself
            self.died = exc
            log.critical("buffer_owner_died", error=error_text(exc))


class Buffer:
    """The durable queue between normalisation and the outputs. See the package docstring."""

    def __init__(
        self,
        config: BufferConfig,
        *,
        gateway: str,
        topics: Topics,
        outputs: Sequence[str] = ("mqtt",),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        encode: schema.Encode = schema.encode,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.topics = topics
        self.outputs = tuple(outputs)
        self.path = config.path
        self._clock = clock
        self._store = Store(config, gateway=gateway, topics=topics, outputs=self.outputs, clock=clock,
                            wall_clock=wall_clock, encode=encode)
        self._owner: _Owner | None = None
        self._closed_snapshot: BufferStats = self._store.snapshot(None, 0)
        self._send: MemoryObjectSendStream[_Pending] | None = None
        self._queued = 0
        self._batch: list[_Pending] = []
        self._changed = anyio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the file in the owner thread, then be the single writer until cancelled; on the way out
        commit what is queued, close the file and join the owner thread."""
        owner = _Owner(self._store, self._clock, self._finished)
        owner.start()
        self._owner = owner
        try:
            await self._call(self._store.open)
        except BaseException:  # also cancellation during the open: never keep the file and its lock
            with anyio.CancelScope(shield=True):
                await self._stop_owner(owner)
            raise
        send, receive = anyio.create_memory_object_stream[_Pending](QUEUE_APPENDS)
        self._send = send
        try:
            task_status.started()
            await self._write_loop(receive)
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain_and_close(receive)
                await self._stop_owner(owner)

    async def _stop_owner(self, owner: _Owner) -> None:
        with contextlib.suppress(BufferError):
            await self._call(self._store.close)
        self._closed_snapshot = owner.snapshot
        owner.stop()
        self._owner = None
        await anyio.to_thread.run_sync(owner.thread.join)

    async def _drain_and_close(self, receive: MemoryObjectReceiveStream[_Pending]) -> None:
        batch, self._batch = self._batch, []
        with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                item = receive.receive_nowait()
                if not item.abandoned:
                    item.taken = True
                    batch.append(item)
        if self._send is not None:
            self._send.close()
            self._send = None
        receive.close()
        if batch:
            try:
                await self._commit(batch)
            except Exception as exc:
                lost = sum(len(p.records) for p in batch)
                log.error("buffer_shutdown_write_failed", records=lost, error=error_text(exc), path=str(self.path))
                for p in batch:
                    p.error = BufferClosed(f"buffer closed before the records were written: {exc}")
                    p.done.set()
                self._queued -= lost

    # -- the owner thread --------------------------------------------------------------------------

    def _finished(self, command: _Command[object]) -> None:
        """On the loop, after the owner ran `command`: wake its caller and anyone waiting for change."""
        if command.done is not None:
            command.done.set()
        self._changed.set()
        self._changed = anyio.Event()

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the owner thread and return its result. Shielded: once submitted, the command runs,
        so its caller must receive the outcome (a lease must not be lost to a cancellation)."""
        owner = self._owner
        if owner is None:
            raise BufferClosed("the buffer is not running")
        command: _Command[T] = _Command(fn, anyio.Event())
        owner.submit(command)  # type: ignore[arg-type]
        assert command.done is not None
        with anyio.CancelScope(shield=True):
            await command.done.wait()
        if command.error is not None:
            raise command.error
        return command.result  # type: ignore[return-value]

    def _post(self, fn: Callable[[], None]) -> None:
        """Fire and forget, still in command order (a later lease sees its effect)."""
        owner = self._owner
        if owner is None:
            raise BufferClosed("the buffer is not running")
        owner.submit(_Command(fn, None))

    # -- append / writer -----------------------------------------------------------------------------

    async def append(self, records: Sequence[schema.Record]) -> AppendResult:
        """Queue `records` for the writer and return once they are committed (durable).

        Cancelled while waiting for room (back-pressure): nothing was queued and `stats().queued` does not
        count them. Cancelled after the writer took them: they are committed anyway.
        """
        if not records:
            return AppendResult(0, 0, {}, None, None)
        send = self._send
        if send is None:
            raise BufferClosed("the buffer is not running")
        pending = _Pending(list(records), anyio.Event())
        self._queued += len(pending.records)
        try:
            await send.send(pending)
        except BaseException as exc:
            if not pending.taken:
                pending.abandoned = True
                self._queued -= len(pending.records)
            if isinstance(exc, (anyio.ClosedResourceError, anyio.BrokenResourceError)):
                raise BufferClosed("the buffer is shutting down") from exc
            raise
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
                with contextlib.suppress(BufferError, sqlite3.Error, OSError):
                    await self._call(self._store.housekeeping)

    async def _receive(self, receive: MemoryObjectReceiveStream[_Pending], *, wait: bool) -> _Pending:
        while True:
            item = await receive.receive() if wait else receive.receive_nowait()
            if not item.abandoned:
                item.taken = True
                return item

    async def _collect(self, receive: MemoryObjectReceiveStream[_Pending]) -> list[_Pending]:
        """Gather one batch: the first append, everything already queued, then (only when several appends
        were queued, i.e. producers are concurrent) more for up to `linger`, at most `batch_max` records.

        A lone producer gains nothing from lingering (it waits for its own commit before appending
        again), so it gets group commit at disk speed; concurrent producers share transactions.
        """
        # The batch lives on self until committed, so a shutdown during linger or retry still writes it.
        self._batch = batch = []
        with anyio.move_on_after(HOUSEKEEPING_INTERVAL):
            batch.append(await self._receive(receive, wait=True))
        if not batch:
            return batch
        n = len(batch[0].records)
        limit = self.config.batch_max
        with contextlib.suppress(anyio.WouldBlock):
            while n < limit:
                item = await self._receive(receive, wait=False)
                batch.append(item)
                n += len(item.records)
        if len(batch) > 1 and n < limit and self.config.linger > 0:
            with anyio.move_on_after(self.config.linger):
                while n < limit:
                    item = await self._receive(receive, wait=True)
                    batch.append(item)
                    n += len(item.records)
        return batch

    async def _commit_until_done(self, batch: list[_Pending]) -> None:
        """Commit `batch`, retrying (with the records kept in memory) while the disk refuses it."""
        delay = 0.05
        while True:
            try:
                await self._commit(batch)
            except (sqlite3.Error, OSError, LowDisk):
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
            else:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        """One transaction for the whole batch (in the owner thread); wakes the waiters after COMMIT."""
        store = self._store
        lists = [p.records for p in batch]

        def write() -> list[AppendResult]:
            try:
                return store.append(lists)
            except (sqlite3.Error, OSError, LowDisk) as exc:
                store.enter_fault(exc)
                raise

        results = await self._call(write)
        self._queued -= sum(len(p.records) for p in batch)
        for p, result in zip(batch, results, strict=True):
            p.result = result
            p.done.set()

    async def count_loss(self, equipment: str, reason: str, count: int) -> None:
        """Count `count` items of `equipment` lost for `reason` before they became records (no seq), durably,
        and announce them. Retries while the disk refuses (like `append`)."""
        if count <= 0:
            return
        delay = 0.05
        store = self._store

        def write() -> None:
            try:
                store.count_loss(equipment, reason, count)
            except (sqlite3.Error, OSError) as exc:
                store.enter_fault(exc)
                raise

        while True:
            try:
                await self._call(write)
            except (sqlite3.Error, OSError):
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
            else:
                return

    # -- outputs ---------------------------------------------------------------------------------------

    def begin_replay(self, output: str) -> None:
        """`output`'s link (re)connected: everything appended so far is its backlog from now on, and
        pending loss announcements are due at once."""
        self._check_output(output)
        self._post(lambda: self._store.begin_replay(output))

    def announce_now(self, output: str) -> None:
        """Make every pending loss announcement due for `output` at once (used by the drain on stop)."""
        self._check_output(output)
        self._post(lambda: self._store.announce_now(output))

    def set_max_message_bytes(self, limit: int | None) -> None:
        """The largest message the outputs accept (the broker's Maximum Packet Size); larger records are
        refused at append time, counted and announced as `too_large`. None: no limit."""
        self._post(lambda: self._store.set_max_message_bytes(limit))

    async def lease(self, output: str, max_count: int, max_bytes: int | None = None) -> Lease:
        """Hand `output` up to `max_count` records and at most `max_bytes` of payload (at least one record)."""
        self._check_output(output)
        try:
            return await self._call(lambda: self._store.lease(output, max_count, max_bytes))
        except sqlite3.Error as exc:
            raise BufferError(f"cannot read the buffer {self.path}: {exc}") from exc

    async def settle(
        self,
        lease: Lease,
        acked: Sequence[int] = (),
        retry: Sequence[int] = (),
        dead: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Settle a lease in ONE transaction: `acked` delivered (deleted once every output acked them),
        `retry` back to the queue (`attempts + 1`), `dead` (seq, reason) moved to dead letters, counted and
        announced. Seqs not in `lease` (or evicted meanwhile) are ignored. A failed write keeps delivered
        records out of circulation and is retried when idle (logged once)."""
        if not (acked or retry or dead):
            return
        await self._call(lambda: self._store.settle(lease, list(acked), list(retry), list(dead)))

    # -- observation ---------------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        owner = self._owner
        snapshot = owner.snapshot if owner is not None else self._closed_snapshot
        if snapshot.queued != self._queued:
            snapshot = dataclasses.replace(snapshot, queued=self._queued)
        return snapshot

    async def wait_for_messages(self, output: str, timeout: float) -> None:  # noqa: ASYNC109 - agreed interface
        """Return when something may be leasable for `output` (or after `timeout`); never busy-waits."""
        self._check_output(output)
        with anyio.move_on_after(timeout):
            while True:
                delay = self._leasable_in(output)
                if delay == 0:
                    return
                event = self._changed
                if delay is None:
                    await event.wait()
                else:
                    with anyio.move_on_after(delay):
                        await event.wait()

    def _leasable_in(self, output: str) -> float | None:
        """0: leasable now; seconds until a replay token or a due announcement; None: wait for a change."""
        stats = self.stats()
        out = stats.outputs.get(output)
        if out is None:
            return None
        if out.announcements_due or out.unleased_live:
            return 0.0
        waits: list[float] = []
        if out.next_announcement_in is not None:
            waits.append(max(out.next_announcement_in - (self._clock() - out.observed_at), 0.0))
        if out.unleased_backlog:
            rate = self.config.replay_rate
            if rate is None or out.replay_tokens is None:
                return 0.0
            tokens = min(max(1.0, rate), out.replay_tokens + (self._clock() - out.tokens_at) * rate)
            waits.append(0.0 if tokens >= 1.0 else (1.0 - tokens) / rate)
        return min(waits) if waits else None

    def _check_output(self, output: str) -> None:
        if output not in self.outputs:
            raise ValueError(f"unknown output {output!r}; this buffer serves {list(self.outputs)}")
