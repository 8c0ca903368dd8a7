"""MachineStates folds events into each machine's current state and publishes it retained, on change only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from emsedge.schema import EquipmentStateMessage, EventType, event
from emsedge.state import MachineStates
from emsedge.supervisor import EquipmentHealth, EquipmentState
from emsedge.topics import Topics


@dataclass
class _Result:
    ok: bool


@dataclass
class FakePublisher:
    connected: bool = True
    connection_epoch: int = 1
    fail: bool = False
    sent: list[tuple[str, bytes, bool]] = field(default_factory=list)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> Any:
        if self.fail:
            return _Result(False)
        self.sent.append((topic, payload, retain))
        return _Result(True)


def _states() -> tuple[MachineStates, FakePublisher, EquipmentHealth]:
    publisher = FakePublisher()
    states = MachineStates("gw", Topics("ems/p/a/l"), publisher)
    health = EquipmentHealth()
    states.add("reflow-1", "reflow_oven", health)
    return states, publisher, health


@pytest.mark.asyncio
async def test_state_is_published_retained_once_per_change_and_again_after_a_reconnect() -> None:
    states, publisher, health = _states()
    await states.publish_changes()
    await states.publish_changes()
    assert [(t, r) for t, _, r in publisher.sent] == [("ems/p/a/l/reflow-1/state", True)]
    first = EquipmentStateMessage.model_validate_json(publisher.sent[0][1])
    assert (first.connection, first.station_state, first.active_faults, first.last_board) == (
        "connecting", None, [], None)

    health.state = EquipmentState.CONNECTED
    await states.publish_changes()
    assert json.loads(publisher.sent[-1][1])["connection"] == "connected"
    assert len(publisher.sent) == 2

    publisher.connection_epoch += 1  # a new connection: the broker may have forgotten retained messages
    await states.publish_changes()
    assert len(publisher.sent) == 3


@pytest.mark.asyncio
async def test_events_set_the_e58_state_active_faults_and_last_board() -> None:
    states, publisher, _health = _states()
    occurred = event("reflow-1", "reflow_oven", EventType.FAULT_OCCURRED, "2026-11-24T10:00:01.000Z",
                     fault_occurrence_id="f1", fault_code="REFLOW-3", text="O2 high", severity="error")
    states.observe([
        event("reflow-1", "reflow_oven", EventType.STATION_STATE_CHANGED, "2026-11-24T10:00:00.000Z",
              signal="oven_state", state=1100, state_name="productive", raw_value=2),
        occurred,
        event("reflow-1", "reflow_oven", EventType.UNIT_PROCESSED, "2026-11-24T10:00:02.000Z", serial="PCB-7"),
        event("other", "aoi", EventType.UNIT_INSPECTED, serial="PCB-7"),  # not configured here: ignored
    ])
    await states.publish_changes()
    state = json.loads(publisher.sent[-1][1])
    assert (state["station_state"], state["station_state_name"], state["station_state_since"]) == (
        1100, "productive", "2026-11-24T10:00:00.000Z")
    assert state["active_faults"] == [{"fault_occurrence_id": "f1", "fault_code": "REFLOW-3", "text": "O2 high",
                                       "severity": "error", "since": "2026-11-24T10:00:01.000Z"}]
    assert state["last_board"] == {"serial": "PCB-7", "event": "unit_processed", "ts": "2026-11-24T10:00:02.000Z"}
    states.observe([event("reflow-1", "reflow_oven", EventType.FAULT_CLEARED, fault_occurrence_id="f1",
                          fault_code="REFLOW-3")])
    await states.publish_changes()
    assert json.loads(publisher.sent[-1][1])["active_faults"] == []


@pytest.mark.asyncio
async def test_a_removed_machine_is_cleared_with_an_empty_retained_message_retried_until_acknowledged() -> None:
    states, publisher, _health = _states()
    await states.publish_changes()
    states.remove("reflow-1")
    publisher.fail = True
    await states.publish_changes()
    publisher.fail = False
    await states.publish_changes()
    assert publisher.sent[-1] == ("ems/p/a/l/reflow-1/state", b"", True)
    await states.publish_changes()
    assert len(publisher.sent) == 2  # cleared once, nothing published for it afterwards
