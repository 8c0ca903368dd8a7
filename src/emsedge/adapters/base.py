"""The adapter protocols and the context the runtime hands to each adapter.

Two shapes, both first-class (Fledge's lesson), and neither owns a reconnect loop: the supervisor
(`emsedge.supervisor`) keeps every session alive, backs off, logs state changes and emits the
`connection_lost` / `connection_restored` events.

* `PolledAdapter` (Modbus, OPC UA in poll mode): the scheduler owns the loop. One session is
  `async with adapter:` (connect) plus `poll()` once per period on the drift-free grid of
  `emsedge.scheduler`; a poll that raises ends the session.
* `PushAdapter` (OPC UA subscriptions, HSMS): `session(ctx)` opens one connection, calls
  `await ctx.connected()` once data can flow, hands records to `ctx.emit()` and returns or raises
  `AdapterError(transient=...)` when the connection ends. It never sleeps and retries by itself.

An adapter never writes to equipment: the gateway is read-only by default.
"""

from __future__ import annotations

import bisect
import enum
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import structlog
from structlog.typing import FilteringBoundLogger

from emsedge.config import Backoff, EquipmentBase
from emsedge.schema import EventType, Record, event, utc_iso

Emit = Callable[[Sequence[Record]], Awaitable[None]]
"""Hand records to the buffer. Returning means they are durable; an adapter may acknowledge them then."""

CountLoss = Callable[[str, int], Awaitable[None]]
"""(reason, count): data lost before a record existed (e.g. an OPC UA notification queue overflow).
The runtime wires it to `Buffer.count_loss(equipment, reason, count)`: durable and announced to MES."""

Connected = Callable[[], Awaitable[None]]
"""Called by a session once data flows; the supervisor turns it into `connection_restored`."""


@runtime_checkable
class PolledAdapter(Protocol):
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def poll(self) -> Sequence[Record]: ...
    def offline_records(self, reason: str) -> Sequence[Record]:
        """Bad-quality readings for every signal, emitted with `connection_lost`."""
        ...


@runtime_checkable
class PushAdapter(Protocol):
    async def session(self, ctx: AdapterContext) -> None:
        """One connection, until it ends: `await ctx.connected()` once up; raise `AdapterError` when it ends."""
        ...

    def offline_records(self, reason: str) -> Sequence[Record]: ...


Adapter = PolledAdapter | PushAdapter

POLL_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the `emsedge_poll_duration_seconds` histogram; +Inf is implied."""


class EquipmentState(enum.StrEnum):
    """Where a supervised session stands; exported in /healthz and as `emsedge_equipment_state`.

    connecting: started, no session has delivered data yet.  connected: the current session delivers.
    retrying: the last session ended for a transient reason; the next attempt follows the backoff.
    failed: the last session ended for a permanent reason (the equipment refuses our config); attempts
    continue at the slowest backoff rate (`backoff.max`) so a fixed machine comes back without a restart.
    disabled: `enabled: false` in the config; nothing runs.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    FAILED = "failed"
    DISABLED = "disabled"


@dataclass
class EquipmentHealth:
    """Live state of one supervised session, read by /healthz, /metrics and the status line.

    The supervisor alone writes `state`, `last_error` and `reconnects`; the poll loop and the adapters
    write the counters.
    """

    state: EquipmentState = EquipmentState.CONNECTING
    last_good_read: str | None = None
    last_error: str | None = None
    polls: int = 0
    poll_errors: int = 0
    skipped_cycles: int = 0
    values: int = 0
    reconnects: int = 0
    losses: dict[str, int] = field(default_factory=dict)
    poll_durations: list[float] = field(default_factory=list)
    # Cumulative histogram of every poll duration since start (non-cumulative counts per bucket of
    # POLL_DURATION_BUCKETS, last slot is +Inf); `poll_durations` keeps only the recent ones.
    poll_duration_counts: list[int] = field(default_factory=lambda: [0] * (len(POLL_DURATION_BUCKETS) + 1))
    poll_duration_sum: float = 0.0

    @property
    def connected(self) -> bool:
        """True while the current session delivers data (`state == connected`)."""
        return self.state is EquipmentState.CONNECTED

    @property
    def disabled(self) -> bool:
        """True when the equipment is not expected to deliver: `failed` or `disabled` (kept for /healthz)."""
        return self.state in (EquipmentState.FAILED, EquipmentState.DISABLED)

    def good_read(self, n_values: int, duration: float | None = None) -> None:
        self.last_good_read = utc_iso()
        self.values += n_values
        if duration is not None:
            self.poll_durations.append(duration)
            del self.poll_durations[:-256]
            self.poll_duration_counts[bisect.bisect_left(POLL_DURATION_BUCKETS, duration)] += 1
            self.poll_duration_sum += duration


def backoff_delays(config: Backoff, rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Capped exponential backoff with jitter in the upper half: each delay is 0.5-1x of the nominal one.

    The nominal delay starts at `initial` and doubles up to `max`; so every delay lies in
    [initial / 2, max] and the k-th in [d_k / 2, d_k] with d_k = min(initial * 2**k, max).
    """
    delay = config.initial
    while True:
        yield delay * (0.5 + rng() / 2)
        delay = min(delay * 2, config.max)


async def _no_loss_counter(reason: str, count: int) -> None:
    return None


async def _not_supervised() -> None:
    return None


@dataclass
class AdapterContext:
    """What an adapter may use: its config, a logger bound to it, the emit path, loss counting, health.

    `on_connected` is wired by the supervisor (it emits `connection_restored` once per outage); without
    a supervisor (one-shot reads, tests) `connected()` only sets the health state.
    """

    equipment: EquipmentBase
    emit: Emit
    log: FilteringBoundLogger = None  # type: ignore[assignment]  # bound with equipment=<id> in __post_init__
    health: EquipmentHealth = field(default_factory=EquipmentHealth)
    loss_counter: CountLoss = _no_loss_counter
    on_connected: Connected | None = None

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = structlog.get_logger("emsedge.adapter").bind(equipment=self.equipment.id)

    def backoff(self) -> Iterator[float]:
        return backoff_delays(self.equipment.backoff)

    def event(self, type: EventType | str, ts: str | None = None, **fields: Any) -> Record:
        return event(self.equipment.id, self.equipment.type, type, ts, **fields)

    async def connected(self) -> None:
        """The session is up and data flows (idempotent within a session)."""
        if self.on_connected is not None:
            await self.on_connected()
        else:
            self.health.state = EquipmentState.CONNECTED

    async def count_loss(self, reason: str, count: int) -> None:
        """Count data lost before a record existed: durable, per equipment and reason, announced."""
        if count <= 0:
            return
        self.health.losses[reason] = self.health.losses.get(reason, 0) + count
        await self.loss_counter(reason, count)


AdapterFactory = Callable[[AdapterContext], Adapter]
