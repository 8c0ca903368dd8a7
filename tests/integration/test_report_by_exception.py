"""Report by exception against a real Modbus server: the Modbus adapter polls a register the test keeps
changing (written over Modbus TCP), and the reporter passes on only moves beyond the deadband, rounded,
plus the full snapshot each snapshot_interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from modbus_server import ModbusTestServer, encode
from pymodbus.client import AsyncModbusTcpClient

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.adapter import ModbusAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.report import Reporter
from emsedge.schema import Record


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oven(port: int) -> ModbusEquipment:
    return ModbusEquipment.model_validate({
        "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": port, "timeout": "500ms"},
        "poll_interval": "100ms", "publish": "on_change", "snapshot_interval": "60s", "precision": 2,
        "signals": [
            {"name": "zone1_temp", "table": "holding", "address": 0, "type": "float32", "deadband": 0.5},
            {"name": "board_count", "table": "holding", "address": 2, "type": "uint16"},
            {"name": "o2_ppm", "table": "holding", "address": 3, "type": "float32", "deadband": "10%"},
        ],
    })


def values(records: Sequence[Record]) -> dict[str, Any]:
    assert all(r.kind == "telemetry" for r in records)
    return {r["signal"]: r["value"] for rec in records for r in rec.body["readings"]}


@pytest.mark.asyncio
async def test_on_change_with_a_deadband_reports_only_real_moves_of_a_changing_modbus_value() -> None:
    async with ModbusTestServer(holding=[0] * 8) as server:
        writer = AsyncModbusTcpClient("127.0.0.1", port=server.port)
        await writer.connect()

        async def write(address: int, type_: str, value: float) -> None:
            result = await writer.write_registers(address, encode(type_, value), device_id=1)
            assert not result.isError()

        equipment = oven(server.port)
        clock = ManualClock()
        reporter = Reporter(equipment, clock=clock)

        async def emit(records: Sequence[Record]) -> None:
            raise AssertionError("polled adapters return their records")

        try:
            async with ModbusAdapter(AdapterContext(equipment=equipment, emit=emit)) as adapter:

                async def poll() -> dict[str, Any]:
                    return values(reporter.process(await adapter.poll()))

                await write(0, "float32", 247.05)
                await write(2, "uint16", 7)
                await write(3, "float32", 400.0)
                # The first poll is a snapshot: every signal, float32 noise rounded away (247.0500030517578).
                assert await poll() == {"zone1_temp": 247.05, "board_count": 7, "o2_ppm": 400.0}
                assert await poll() == {}  # nothing changed: nothing sent
                await write(0, "float32", 247.4)
                assert await poll() == {}  # 0.35 is within the 0.5 deadband
                await write(0, "float32", 247.6)
                assert await poll() == {"zone1_temp": 247.6}  # 0.55 from the last *reported* value
                await write(3, "float32", 430.0)
                assert await poll() == {}  # 7.5 % of 400
                await write(3, "float32", 445.0)
                assert await poll() == {"o2_ppm": 445.0}  # 11.25 %
                await write(2, "uint16", 8)
                assert await poll() == {"board_count": 8}  # no deadband: any change
                clock.now += 60
                # The snapshot: the latest value of every signal, reported or not.
                await write(0, "float32", 247.7)
                assert await poll() == {"zone1_temp": 247.7, "board_count": 8, "o2_ppm": 445.0}
                assert await poll() == {}
        finally:
            writer.close()
