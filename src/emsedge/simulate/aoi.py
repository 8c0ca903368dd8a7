"""The virtual AOI: passive GEM equipment (this project's HSMS code) showing the line model's inspection.

Status variables (S1F3):

    1101 aoi_state        A   IDLE | INSPECTING
    1102 program          A   inspection program
    1103 inspected_count  U4  boards inspected since start
    1104 fail_count       U4  boards that failed
    1105 light_level      F8  %   camera light level (drops with alarm 7)
    1106 last_serial      A   serial of the last board inspected
    1107 process_state    A   EXECUTING | IDLE (idle after a minute without boards)

Collection event 3001 `board_inspected`, with data values

    2001 board_serial  A        2002 result  A (PASS | FAIL)
    2003 defects       L of A   "<refdes>:<defect code>", e.g. "C12:tombstone"
    2004 defect_count  U4

Alarms (S5F1): 7 camera light level low, 8 conveyor width mismatch, 9 barcode unreadable.

Messages go out one at a time from a sender task fed by a bounded stream, so the line's clock never
waits for the host. Like many real tools (GEM spooling is optional) it does not spool: an event or alarm
that happens while no host is connected is not sent, and is logged.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from emsedge.adapters.hsms.connection import HsmsClosed
from emsedge.adapters.hsms.secs2 import A, L
from emsedge.simulate.gem_equipment import GemEquipment, SimAlarm, SimStatusVariable
from emsedge.simulate.line import AOI_ALARM_TEXT, Board, Line

CEID_BOARD_INSPECTED = 3001
DV_BOARD_SERIAL, DV_RESULT, DV_DEFECTS, DV_DEFECT_COUNT = 2001, 2002, 2003, 2004
SEND_TIMEOUT = 5.0

log = structlog.get_logger("emsedge.simulate.aoi")


class AoiEquipment:
    def __init__(self, line: Line) -> None:
        self.line = line
        self.cfg = line.config.aoi
        aoi = line.aoi
        self.last_serial = ""
        self.equipment = GemEquipment(
            host=self.cfg.host,
            port=self.cfg.port,
            session_id=self.cfg.session_id,
            name=self.cfg.id,
            mdln="EMSEDGE-VAOI",
            softrev="1.0",
            t3=SEND_TIMEOUT,
            status_variables={
                1101: SimStatusVariable("aoi_state", lambda: aoi.state),
                1102: SimStatusVariable("program", lambda: aoi.program),
                1103: SimStatusVariable("inspected_count", lambda: aoi.inspected),
                1104: SimStatusVariable("fail_count", lambda: aoi.failed),
                1105: SimStatusVariable("light_level", lambda: round(aoi.light_level, 1), "%"),
                1106: SimStatusVariable("last_serial", lambda: self.last_serial),
                1107: SimStatusVariable("process_state", lambda: aoi.process_state),
            },
            data_values={DV_BOARD_SERIAL: "", DV_RESULT: "", DV_DEFECTS: L(), DV_DEFECT_COUNT: 0},
            collection_events={CEID_BOARD_INSPECTED: "board_inspected"},
            alarms={alid: SimAlarm(text) for alid, text in AOI_ALARM_TEXT.items()},
        )
        self.sent_events = 0
        self.unsent_events = 0
        self._send: MemoryObjectSendStream[tuple[str, Any]]
        self._receive: MemoryObjectReceiveStream[tuple[str, Any]]
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, Any]](math.inf)
        self._serving: anyio.CancelScope | None = None

    @property
    def running(self) -> bool:
        return self._serving is not None

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until `stop()`; may be started again later on the same port."""
        with anyio.CancelScope() as scope:
            self._serving = scope
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(self.equipment.serve)
                    task_status.started()
            finally:
                self._serving = None

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.cancel()

    def board_inspected(self, board: Board) -> None:
        self._send.send_nowait(("event", board))

    def alarm(self, alid: int, *, active: bool) -> None:
        self._send.send_nowait(("alarm_set" if active else "alarm_cleared", alid))

    async def run_sender(self) -> None:
        async with self._receive:
            async for kind, item in self._receive:
                try:
                    with anyio.fail_after(SEND_TIMEOUT + 1):
                        await self._deliver(kind, item)
                except (HsmsClosed, TimeoutError, OSError) as exc:
                    self.unsent_events += 1
                    log.info("not sent: no host", equipment=self.cfg.id, message=kind, reason=str(exc) or "timeout")

    async def _deliver(self, kind: str, item: Any) -> None:
        eq = self.equipment
        if kind == "event":
            board: Board = item
            self.last_serial = board.serial
            defects = [f"{d['refdes']}:{d['code']}" for d in board.defects]
            eq.data_values[DV_BOARD_SERIAL] = board.serial
            eq.data_values[DV_RESULT] = board.result or ""
            eq.data_values[DV_DEFECTS] = L(*[A(d) for d in defects])
            eq.data_values[DV_DEFECT_COUNT] = len(defects)
            if eq.link is None:
                raise HsmsClosed("no host connected")
            if await eq.send_event(CEID_BOARD_INSPECTED) is not None:
                self.sent_events += 1
            else:
                self.unsent_events += 1
        elif kind == "alarm_set":
            if eq.link is None:
                eq.alarms[item].active = True
                raise HsmsClosed("no host connected")
            await eq.set_alarm(item)
        else:
            if eq.link is None:
                eq.alarms[item].active = False
                raise HsmsClosed("no host connected")
            await eq.clear_alarm(item)
