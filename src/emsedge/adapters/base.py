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

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import structlog
from structlog.typing import FilteringBoundLogger

from emsedge.config import EquipmentBase
from emsedge.schema import EventType, Record, event
from emsedge.supervisor import (
    POLL_DURATION_BUCKETS,
    EquipmentHealth,
    EquipmentState,
    backoff_delays,
)

__all__ = [
    "POLL_DURATION_BUCKETS",
    "Adapter",
    "AdapterContext",
    "Connected",
    "CountLoss",
    "Emit",
    "EquipmentHealth",
    "EquipmentState",
    "PolledAdapter",
    "PushAdapter",
    "backoff_delays",
]

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


async def _no_loss_counter(reason: str, count: int) -> None:
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
    state_dir: Path | None = None
    """Folder for an adapter's own durable state (e.g. the result_files ledger): the buffer's folder."""
    gateway: str | None = None
    """The gateway's id (`gateway.id`), for ids an adapter derives deterministically (`Record.message_id`)."""

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = structlog.get_logger("emsedge.adapter").bind(equipment=self.equipment.id)

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

