"""The adapter protocols and the context the runtime hands to each adapter.

Two shapes, both first-class (Fledge's lesson):

* `PolledAdapter` (Modbus, OPC UA in poll mode): the scheduler owns the loop. It enters the adapter
  (connect), calls `poll()` once per period without drift, and on a transient `AdapterError` emits
  `connection_lost` plus `offline_records()`, leaves the adapter (close), backs off and enters again.
* `PushAdapter` (OPC UA subscriptions, HSMS): the adapter owns its loop in `run()`, reports readiness
  through `task_status.started()` once its first connection attempt is under way, hands records to
  `ctx.emit()` and handles its own reconnects (using `ctx.backoff()`), emitting connection events through
  `ctx.connection_lost()` / `ctx.connection_restored()`.

An adapter never writes to equipment: the gateway is read-only by default.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import structlog
from anyio.abc import TaskStatus

from emsedge.config import Backoff, EquipmentBase
from emsedge.schema import EventType, Record, event, utc_iso


@runtime_checkable
class PolledAdapter(Protocol):
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def poll(self) -> Sequence[Record]: ...
    def offline_records(self, reason: str) -> Sequence[Record]:
        """Bad-quality readings for every signal, emitted when the connection is lost."""
        ...


@runtime_checkable
class PushAdapter(Protocol):
    async def run(self, ctx: AdapterContext, *, task_status: TaskStatus[None]) -> None: ...


Adapter = PolledAdapter | PushAdapter

POLL_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the `emsedge_poll_duration_seconds` histogram; +Inf is implied."""


@dataclass
class EquipmentHealth:
    """Live state of one piece of equipment, read by /healthz, /metrics and the status line."""

    connected: bool = False
    last_good_read: str | None = None
    last_error: str | None = None
    polls: int = 0
    poll_errors: int = 0
    skipped_cycles: int = 0
    values: int = 0
    reconnects: int = 0
    disabled: bool = False
    poll_durations: list[float] = field(default_factory=list)
    # Cumulative histogram of every poll duration since start (non-cumulative counts per bucket of
    # POLL_DURATION_BUCKETS, last slot is +Inf); `poll_durations` keeps only the recent ones.
    poll_duration_counts: list[int] = field(default_factory=lambda: [0] * (len(POLL_DURATION_BUCKETS) + 1))
    poll_duration_sum: float = 0.0

    def good_read(self, n_values: int, duration: float | None = None) -> None:
        self.last_good_read = utc_iso()
        self.values += n_values
        if duration is not None:
            self.poll_durations.append(duration)
            del self.poll_durations[:-256]
            self.poll_duration_counts[bisect.bisect_left(POLL_DURATION_BUCKETS, duration)] += 1
            self.poll_duration_sum += duration


def backoff_delays(config: Backoff) -> Iterator[float]:
    """Capped exponential backoff with full jitter in the upper half: 0.5-1x of the nominal delay."""
    delay = config.initial
    while True:
        yield delay * (0.5 + random.random() / 2)
        delay = min(delay * 2, config.max)


@dataclass
class AdapterContext:
    """What an adapter may use: its config, a logger bound to it, the emit path and its health record."""

    equipment: EquipmentBase
    emit: Callable[[Sequence[Record]], Awaitable[None]]
    log: Any = None  # structlog BoundLogger bound with equipment=<id>
    health: EquipmentHealth = field(default_factory=EquipmentHealth)

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = structlog.get_logger("emsedge.adapter").bind(equipment=self.equipment.id)

    def backoff(self) -> Iterator[float]:
        return backoff_delays(self.equipment.backoff)

    def event(self, type: EventType | str, ts: str | None = None, **fields: Any) -> Record:
        return event(self.equipment.id, self.equipment.type, type, ts, **fields)

    async def connection_lost(self, reason: str, extra: Sequence[Record] = ()) -> None:
        """Log once and emit `connection_lost` (plus e.g. bad-quality readings) on a state change."""
        if not self.health.connected and self.health.last_error == reason:
            return
        was_connected = self.health.connected
        self.health.connected = False
        self.health.last_error = reason
        self.log.warning("connection lost" if was_connected else "cannot connect", reason=reason)
        await self.emit([self.event(EventType.CONNECTION_LOST, reason=reason), *extra])

    async def connection_restored(self) -> None:
        if self.health.connected:
            return
        self.health.connected = True
        if self.health.last_error is not None:
            self.health.reconnects += 1
        self.health.last_error = None
        self.log.info("connected")
        await self.emit([self.event(EventType.CONNECTION_RESTORED)])
