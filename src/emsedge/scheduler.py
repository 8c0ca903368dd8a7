"""The one poll grid: a period without drift, a deadline per poll, skip on overrun.

`poll_grid` is source-agnostic. Modbus and OPC UA in poll mode run it inside one supervised session
(`async with adapter: await poll_grid(adapter.poll, ...)`); the HSMS host runs it for its S1F3
status-variable polls inside its session. Reconnecting, backoff and connection events are not its
business: the session it runs in ends when a poll raises, and `emsedge.supervisor` takes over.

Invariants:

* **No drift.** Poll k of a session starts at `start + k * interval` on anyio's clock (monotonic; a
  trio `MockClock` in tests), never at "end of last poll + interval". The first poll of a session runs
  at once; `start` is the session start plus a per-equipment phase (`phase_offset`, stable, from the
  equipment id) so that many machines spread their polls over the period instead of all firing in the
  same instant. When a poll overruns (or waits for the previous emit), the slots it ran over are skipped,
  not made up in a burst, and counted in `health.skipped_cycles`. A new session starts a new grid.
* **A deadline per poll.** `adapter.poll_deadline` when the adapter defines one, otherwise
  `max(interval, connection timeout) * 3` (connection timeout when the equipment config has one, else
  5 s). It is a backstop: adapters put their own deadline on every request. A poll past it ends the
  session as a transient `AdapterError`.
* **A failed poll ends the session**, except `SkipCycle`: the source says this one cycle failed but the
  connection is fine (an S1F3 the equipment rejects); it is counted in `health.poll_errors` and the grid
  goes on.
* **Connected means data flows.** `ctx.connected()` is awaited when the first poll of a session succeeds,
  not when the socket opens, so a device that accepts TCP but never answers does not flap restored/lost
  on every retry. Its records follow the `connection_restored` event.
* **Emits overlap polls, in order.** Handing records on (`ctx.emit`, durable when it returns) runs beside
  the next poll, one emit in flight per equipment: a slow commit bounds the rate, it does not stretch
  every period by a disk flush. Before the session ends the emit in flight completes, so the records of
  the last good poll precede the `connection_lost` that follows them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Awaitable, Callable, Sequence

import anyio

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.spec import HasPollDeadline
from emsedge.errors import AdapterError
from emsedge.schema import Record

DEFAULT_TIMEOUT = 5.0

Poll = Callable[[], Awaitable[Sequence[Record]]]


class SkipCycle(Exception):
    """Raised by a poll whose cycle failed while its connection is fine: counted, the grid goes on."""


def poll_deadline(adapter: object, ctx: AdapterContext, interval: float) -> float:
    """The backstop deadline of one poll (see the module docstring)."""
    if isinstance(adapter, HasPollDeadline) and adapter.poll_deadline > 0:
        return float(adapter.poll_deadline)
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


def _count_values(records: Sequence[Record]) -> int:
    values = 0
    for record in records:
        readings = record.body.get("readings")
        if readings is not None:
            values += len(readings)
    return values


async def poll_grid(poll: Poll, ctx: AdapterContext, interval: float, deadline: float) -> None:
    """Poll at once, then on the (phase-shifted) grid of this session until a poll raises.

    Never returns normally: the session ends with the exception of the failed poll (a deadline becomes
    a transient `AdapterError`) or with the failure of an emit.
    """
    if interval <= 0:
        raise ValueError("poll interval must be positive")
    health = ctx.health
    start = anyio.current_time() + phase_offset(ctx.equipment.id, interval)
    k = 0  # the first poll runs now, ahead of slot 0; the next one takes slot 1
    first = True
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
                began = anyio.current_time()
                records: Sequence[Record] | None
                try:
                    with anyio.fail_after(deadline):
                        records = await poll()
                except SkipCycle:
                    health.poll_errors += 1
                    records = None
                except TimeoutError:
                    health.poll_errors += 1
                    raise AdapterError(f"poll did not finish within its {deadline:g}s deadline") from None
                except Exception:
                    health.poll_errors += 1
                    raise
                duration = anyio.current_time() - began
                if emitted is not None:
                    await emitted.wait()
                if emit_failure:
                    raise emit_failure[0]
                if records is not None:
                    if first:
                        await ctx.connected()
                        first = False
                    health.polls += 1
                    health.good_read(_count_values(records), duration)
                    if records:
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
    raise AssertionError("the poll grid ended without an error")  # pragma: no cover - the loop never breaks
