"""Helpers shared by the HSMS tests: an AOI-shaped config, a collecting AdapterContext, the simulator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.hsms.config import HsmsEquipment
from emsedge.schema import Record
from emsedge.simulate.gem_equipment import GemEquipment, SimAlarm, SimStatusVariable

SV_PROCESS_STATE = 2101
SV_INSPECTED = 2102
VID_SERIAL, VID_RESULT, VID_DEFECTS = 2001, 2002, 2003
CEID_BOARD_INSPECTED = 3001
ALID_CONVEYOR = 7001


def aoi_config(port: int, **connection: Any) -> HsmsEquipment:
    timers = {"t3": "2s", "t5": "100ms", "t6": "1s", "t7": "2s", "t8": "1s", "linktest_interval": 0} | connection
    return HsmsEquipment.model_validate(
        {
            "id": "aoi-1", "type": "aoi", "adapter": "hsms",
            "connection": {"host": "127.0.0.1", "port": port, "session_id": 0, "mode": "active", **timers},
            "poll_interval": "200ms",
            "backoff": {"initial": "50ms", "max": "200ms"},
            "status_variables": [
                {"name": "process_state", "svid": SV_PROCESS_STATE, "event": "station_state",
                 "map": {1: 2000, 2: 1100, 3: 5000}},
                {"name": "inspected_boards", "svid": SV_INSPECTED},
            ],
            "reports": [{"rptid": 100, "vids": [VID_SERIAL, VID_RESULT, VID_DEFECTS],
                         "names": ["board_serial", "result", "defect_count"]}],
            "events": [{"name": "board_inspected", "ceid": CEID_BOARD_INSPECTED, "reports": [100],
                        "emit": "unit_inspected", "serial": "board_serial", "result": "result"}],
            "alarms": {"enable_all": True},
        }
    )  # fmt: skip


class Collector:
    """The emit boundary: records in order, and a way to wait for a condition on them."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._changed = anyio.Event()

    async def emit(self, records: Sequence[Record]) -> None:
        self.records.extend(records)
        self._changed.set()
        self._changed = anyio.Event()

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [r.body["event"] for r in self.records if r.event_type == type_]

    def telemetry(self) -> list[Record]:
        return [r for r in self.records if r.kind == "telemetry"]

    async def wait_for(self, predicate: Callable[[Collector], bool], within: float = 15.0) -> None:
        with anyio.fail_after(within):
            while not predicate(self):
                await self._changed.wait()


def context(config: HsmsEquipment, collector: Collector) -> AdapterContext:
    return AdapterContext(equipment=config, emit=collector.emit)


def aoi_simulator(**kwargs: Any) -> GemEquipment:
    board = {"serial": "PCB-0001", "result": "PASS", "defects": 0}
    eq = GemEquipment(
        name="aoi-sim",
        status_variables={
            SV_PROCESS_STATE: SimStatusVariable("ProcessState", 2),
            SV_INSPECTED: SimStatusVariable("InspectedBoards", 17, "boards"),
        },
        data_values={
            VID_SERIAL: lambda: board["serial"],
            VID_RESULT: lambda: board["result"],
            VID_DEFECTS: lambda: board["defects"],
        },
        collection_events={CEID_BOARD_INSPECTED: "BoardInspected"},
        alarms={ALID_CONVEYOR: SimAlarm("conveyor jam", category=5)},
        **kwargs,
    )
    eq.board = board  # type: ignore[attr-defined]
    return eq
