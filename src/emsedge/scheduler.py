"""Poll loops for `PolledAdapter`s: a period without drift, a deadline per poll, skip on overrun, backoff.

`run_polled` is adapter-agnostic (Modbus and OPC UA in poll mode share it). Its invariants:

* **No drift.** Poll k of a session starts at `start + k * interval` (`anyio.current_time()`, monotonic),
  never at "end of last poll + interval". The first poll of a session runs at once; `start` is the
  session start plus a per-equipment phase (`phase_offset`, stable, from the equipment id) so that many
  machines spread their polls over the period instead of all firing in the same instant.
  When a poll overruns (or waits for the previous emit), the slots it ran over are
  skipped, not made up in a burst, and counted in `health.skipped_cycles`. A new session (after a
  reconnect) starts a new grid.
* **A deadline per poll.** `adapter.poll_deadline` when the adapter defines one, otherwise
  `max(interval, connection timeout) * 3` (connection timeout when the equipment config has one, else
  5 s). It is a backstop: adapters put their own deadline on every request. A poll past it counts as a
  transient failure.
* **Failures never escape.** A transient `AdapterError`, a deadline or any unexpected exception (logged
  once with its traceback) leads to `ctx.connection_lost(reason, adapter.offline_records(reason))`,
  leaving the adapter (close), a capped, jittered backoff sleep, and a new attempt. The backoff restarts
  from its initial delay after the first good poll of a session. A permanent `AdapterError` logs one error,
  sets `health.disabled` and returns, so one bad machine never takes down the daemon.
* **Connected means data flows.** `connection_restored` is emitted when the first poll of a session
  succeeds, not when the socket opens: a device that accepts TCP but never answers must not flap
  restored/lost on every retry. Its records follow the event.
* **Emits overlap polls, in order.** Handing records on (`ctx.emit`, durable when it returns) runs
  beside the next poll, one emit in flight per equipment: a slow commit bounds the rate, it does not
  stretch every period by a disk flush. Memory stays bounded at one poll in flight plus one emitting.
* **Readiness.** `task_status.started()` is called at once: the daemon does not wait for equipment.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from emsedge.adapters.base import AdapterContext, PolledAdapter
from emsedge.errors import AdapterError
from emsedge.schema import Record

DEFAULT_TIMEOUT = 5.0


def poll_deadline(adapter: PolledAdapter, ctx: AdapterContext, interval: float) -> float:
    """The backstop deadline of one poll (see the module docstring)."""
    own = getattr(adapter, "poll_deadline", None)
    if isinstance(own, int | float) and own > 0:
        return float(own)
    connection = getattr(ctx.equipment, "connection", None)
    timeout = getattr(connection, "timeout", None)
    if not isinstance(timeout, int | float) or timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    return max(interval, float(timeout)) * 3


def phase_offset(equipment_id: str, interval: float) -> float:
    """Where in the period this equipment polls: a stable spread in [0, interval) from its id.

    Equipment started together would otherwise poll in the same instant every period and hit the
    buffer and the broker in one burst (the last machine's readings waiting behind all the others).
    """
    return zlib.crc32(equipment_id.encode()) / 2**32 * interval


def next_slot(start: float, interval: float, k: int, now: float) -> tuple[int, int]:
    """Index of the next grid slot after poll `k` finished at `now`, and how many slots were skipped.

    Slot k+1 is taken when it is still ahead; otherwise the first slot strictly after `now`.
    """
    following = k + 1
    if start + following * interval > now:
        return following, 0
    due = math.floor((now - start) / interval) + 1
    return due, due - following


async def run_polled(
    adapter: PolledAdapter,
    ctx: AdapterContext,
    interval: float,
    *,
    task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
) -> None:
    """Connect, poll on a fixed grid and emit, forever, until cancelled (or a permanent error)."""
    if interval <= 0:
        raise ValueError("poll interval must be positive")
    task_status.started()
    health = ctx.health
    deadline = poll_deadline(adapter, ctx, interval)
    backoff: Iterator[float] = ctx.backoff()
    logged_unexpected: str | None = None

    def reset() -> None:
        nonlocal backoff, logged_unexpected
        backoff = ctx.backoff()
        logged_unexpected = None
    while True:
        try:
            async with adapter:
                await _poll_session(adapter, ctx, interval, deadline, reset)
        except AdapterError as exc:
            if not exc.transient:
                health.disabled = True
                health.connected = False
                health.last_error = str(exc)
                ctx.log.error("equipment disabled: permanent error; fix the config and restart", reason=str(exc))
                return
            reason = str(exc)
        except TimeoutError:
            reason = f"poll did not finish within its {deadline:g}s deadline"
        except Exception as exc:
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
            if reason != logged_unexpected:
                ctx.log.exception("unexpected error in poll loop; treated as a transient failure", reason=reason)
                logged_unexpected = reason
        await ctx.connection_lost(reason, adapter.offline_records(reason))
        await anyio.sleep(next(backoff))


async def _poll_session(
    adapter: PolledAdapter,
    ctx: AdapterContext,
    interval: float,
    deadline: float,
    on_first_good_poll: Callable[[], None],
) -> None:
    """Poll at once, then on the (phase-shifted) grid of this session until an exception ends it.

    The emit of poll k overlaps poll k+1 (a durable commit takes a disk flush); at most one emit is in
    flight and emits complete in poll order. Before the session ends, the emit in flight completes, so
    the records of the last good poll precede the `connection_lost` that follows them.
    """
    health = ctx.health
    start = anyio.current_time() + phase_offset(ctx.equipment.id, interval)
    k = 0  # the first poll runs now, ahead of slot 0; the next one takes slot 1
    emitted: anyio.Event | None = None
    emit_failure: list[Exception] = []
    failure: Exception | None = None

    async def emit(records: Sequence[Record], done: anyio.Event) -> None:
        try:
            await ctx.emit(records)
        except Exception as exc:
            emit_failure.append(exc)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        try:
            while True:
                began = time.perf_counter()
                try:
                    with anyio.fail_after(deadline):
                        records = await adapter.poll()
                except Exception:
                    health.poll_errors += 1
                    raise
                duration = time.perf_counter() - began
                if emitted is not None:
                    await emitted.wait()
                if emit_failure:
                    raise emit_failure[0]
                if k == 0:
                    await ctx.connection_restored()
                    on_first_good_poll()
                health.polls += 1
                values = 0
                for record in records:
                    readings = record.body.get("readings")
                    if readings is not None:
                        values += len(readings)
                health.good_read(values, duration)
                emitted = anyio.Event()
                tg.start_soon(emit, records, emitted)
                k, skipped = next_slot(start, interval, k, anyio.current_time())
                if skipped:
                    health.skipped_cycles += skipped
                await anyio.sleep_until(start + k * interval)
        except Exception as exc:
            failure = exc
        if emitted is not None:
            await emitted.wait()
    if failure is not None:
        raise failure
    if emit_failure:
        raise emit_failure[0]
