"""The retained current state of every machine: `{prefix}/{equipment}/state` (schema `emsedge/state@1`).

A subscriber that joins late learns from the retained messages what the event stream told everybody
else: the gateway's link to each machine (the supervisor's `EquipmentState`), its SEMI E58 state, its
active faults and the last board an event named. `MachineStates` folds the records the gateway makes
durable into that picture (`observe`, called after the buffer accepted them) and `run` publishes each
machine whose picture changed, retained, QoS 1.

Invariants:
* A state is published only when it differs from the last one published on the current connection;
  after a (re)connect every machine is published again (a broker without persistence forgets retained
  messages).
* A machine removed from the config (`remove`, on reload) gets an empty retained message, which deletes
  the retained state on the broker; a failed publish is retried until it is acknowledged.
* The retained state is a convenience, not a record: it is neither numbered nor buffered. After a
  gateway restart the picture starts again from what the gateway sees (E58 state and faults return
  with the machine's next report; `skip_initial: false` triggers report faults already active).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from emsedge.schema import (
    SCHEMA_STATE,
    EquipmentStateMessage,
    EventType,
    Record,
    Severity,
    utc_iso,
)
from emsedge.supervisor import EquipmentHealth, EquipmentState
from emsedge.topics import Topics

log = structlog.get_logger("emsedge.state")

HEALTH_CHECK_INTERVAL = 0.25
"""How often the supervisor's connection state is compared with the published one (seconds)."""

_BOARD_EVENTS = frozenset({
    EventType.UNIT_PROCESSED, EventType.UNIT_INSPECTED, EventType.UNIT_TESTED, EventType.MATERIALS_INSTALLED,
})


class _Outcome(Protocol):
    @property
    def ok(self) -> bool: ...


class RetainedPublisher(Protocol):
    """What `MachineStates` needs from the MQTT publisher."""

    @property
    def connected(self) -> bool: ...

    @property
    def connection_epoch(self) -> int: ...

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> Any: ...


@dataclass
class _Machine:
    equipment_type: str
    health: EquipmentHealth
    ts: str
    station_state: int | None = None
    station_state_name: str | None = None
    station_state_since: str | None = None
    active_faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_board: dict[str, str] | None = None
    connection: EquipmentState | None = None  # the connection state `ts` was last updated for

    def message(self, gateway: str, equipment: str) -> EquipmentStateMessage:
        return EquipmentStateMessage.model_validate({
            "schema": SCHEMA_STATE, "gateway": gateway, "equipment": equipment,
            "equipment_type": self.equipment_type, "ts": self.ts, "connection": str(self.health.state),
            "station_state": self.station_state, "station_state_name": self.station_state_name,
            "station_state_since": self.station_state_since, "active_faults": list(self.active_faults.values()),
            "last_board": self.last_board,
        })


class MachineStates:
    """The current state of each configured machine, published retained (see the module docstring)."""

    def __init__(self, gateway: str, topics: Topics, publisher: RetainedPublisher, *, qos: int = 1) -> None:
        self.gateway = gateway
        self.topics = topics
        self.publisher = publisher
        self.qos = qos
        self._machines: dict[str, _Machine] = {}
        self._published: dict[str, bytes] = {}  # equipment -> payload acknowledged on this connection
        self._clear: set[str] = set()  # removed equipment whose retained state is still to be deleted
        self._epoch = -1
        self._changed = anyio.Event()

    def add(self, equipment: str, equipment_type: str, health: EquipmentHealth) -> None:
        """A configured machine (again, after a reload changed it: what is known about it is kept)."""
        self._clear.discard(equipment)
        machine = self._machines.get(equipment)
        if machine is None:
            self._machines[equipment] = _Machine(equipment_type, health, utc_iso())
        else:
            machine.equipment_type, machine.health = equipment_type, health
        self._changed.set()

    def remove(self, equipment: str) -> None:
        """A machine left the config: its retained state is deleted on the broker."""
        if self._machines.pop(equipment, None) is not None:
            self._clear.add(equipment)
            self._changed.set()

    def payload(self, equipment: str) -> bytes:
        return self._machines[equipment].message(self.gateway, equipment).model_dump_json(by_alias=True).encode()

    def observe(self, records: Sequence[Record]) -> None:
        """Fold events the buffer accepted into the machines' state."""
        for record in records:
            if record.kind != "event":
                continue
            machine = self._machines.get(record.equipment)
            ev = record.body.get("event")
            if machine is None or not isinstance(ev, dict):
                continue
            kind = ev.get("type")
            if kind == EventType.STATION_STATE_CHANGED:
                machine.station_state, machine.station_state_name = ev.get("state"), ev.get("state_name")
                machine.station_state_since = record.ts
            elif kind == EventType.FAULT_OCCURRED:
                occurrence = str(ev.get("fault_occurrence_id"))
                machine.active_faults[occurrence] = {
                    "fault_occurrence_id": occurrence, "fault_code": str(ev.get("fault_code", "")),
                    "text": ev.get("text"), "severity": ev.get("severity", Severity.ERROR), "since": record.ts,
                }
            elif kind == EventType.FAULT_CLEARED:
                machine.active_faults.pop(str(ev.get("fault_occurrence_id")), None)
            elif kind in _BOARD_EVENTS and ev.get("serial"):
                machine.last_board = {"serial": str(ev["serial"]), "event": str(kind), "ts": record.ts}
            else:
                continue
            machine.ts = record.ts
            self._changed.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish changed states while connected; check the connection states every HEALTH_CHECK_INTERVAL."""
        task_status.started()
        while True:
            with anyio.move_on_after(HEALTH_CHECK_INTERVAL):
                await self._changed.wait()
            self._changed = anyio.Event()
            if self.publisher.connected:
                await self.publish_changes()

    async def publish_changes(self) -> None:
        """One pass: deletions first, then every machine whose state differs from what was acknowledged."""
        if self.publisher.connection_epoch != self._epoch:
            self._epoch = self.publisher.connection_epoch
            self._published.clear()
        for equipment in sorted(self._clear):
            if await self._publish(equipment, b""):
                self._clear.discard(equipment)
                self._published.pop(equipment, None)
                log.info("retained state cleared", equipment=equipment)
        for equipment in list(self._machines):
            machine = self._machines[equipment]
            if machine.connection != machine.health.state:
                machine.connection, machine.ts = machine.health.state, utc_iso()
            payload = self.payload(equipment)
            if self._published.get(equipment) == payload:
                continue
            if await self._publish(equipment, payload):
                self._published[equipment] = payload

    async def _publish(self, equipment: str, payload: bytes) -> bool:
        with anyio.move_on_after(5):
            result: _Outcome = await self.publisher.publish(
                self.topics.state(equipment), payload, qos=self.qos, retain=True
            )
            return result.ok
        return False
