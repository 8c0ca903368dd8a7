"""Normaliser and triggers on what a real Modbus server answers: one poll holds every signal of the map."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modbus_server import ModbusTestServer, RegisterImage, encode
from pymodbus.client import AsyncModbusTcpClient

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.adapter import ModbusAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.normalise import Normaliser
from emsedge.schema import Record

RUNNING, DOWN = 1, 3
STATE, ZONE1, SERIAL = 0, 1, 3  # register addresses


def oven(port: int) -> ModbusEquipment:
    """A state register polled in the same read as a temperature and a board-exit serial."""
    return ModbusEquipment.model_validate({
        "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": port, "timeout": "500ms"},
        "signals": [
            {"name": "machine_state", "table": "holding", "address": STATE, "event": "station_state",
             "map": {RUNNING: 1100, DOWN: 5000}},
            {"name": "zone1_top_actual", "table": "holding", "address": ZONE1, "type": "float32", "unit": "Cel"},
            {"name": "board_exit_serial", "table": "holding", "address": SERIAL, "type": "string", "length": 4},
        ],
        "triggers": [
            {"on_change": "machine_state", "emit": "fault_occurred", "fields": {"fault_code": "OVEN-STOPPED"}},
            {"on_change": "board_exit_serial", "emit": "unit_processed", "serial": "board_exit_serial",
             "include": ["zone1_top_actual", "machine_state"]},
        ],
    })


async def emit_nothing(records: Any) -> None:
    raise AssertionError("poll() returns its records; nothing is emitted")


async def poll_and_normalise(adapter: ModbusAdapter, normaliser: Normaliser) -> tuple[list[Record], list[Record]]:
    polled = await adapter.poll()
    before = copy.deepcopy(polled)
    out = normaliser.process(polled)
    assert polled == before  # the normaliser never modifies what it was given
    return polled, out


def events(records: list[Record]) -> list[dict[str, Any]]:
    return [r.body["event"] for r in records if r.kind == "event"]


@pytest.mark.asyncio
async def test_a_trigger_on_a_station_state_signal_fires_when_other_signals_share_its_poll() -> None:
    image = RegisterImage()
    image.put(STATE, "uint16", RUNNING)
    image.put(ZONE1, "float32", 235.5)
    async with ModbusTestServer(holding=image.registers(16)) as server:
        eq = oven(server.port)
        normaliser = Normaliser(eq)
        async with ModbusAdapter(AdapterContext(equipment=eq, emit=emit_nothing)) as adapter:
            polled, first = await poll_and_normalise(adapter, normaliser)
            assert [r["signal"] for r in polled[0].body["readings"]] == [
                "machine_state", "zone1_top_actual", "board_exit_serial"]  # one poll, all three signals
            assert [r["signal"] for r in first[0].body["readings"]] == ["zone1_top_actual", "board_exit_serial"]
            assert [e["type"] for e in events(first)] == ["station_state_changed"]  # skip_initial: no trigger

            # The oven stops, and the board that was inside leaves it: both in the next poll.
            writer = AsyncModbusTcpClient("127.0.0.1", port=server.port, retries=0, reconnect_delay=0)
            try:
                assert await writer.connect()
                assert not (await writer.write_register(STATE, DOWN)).isError()
                assert not (await writer.write_registers(SERIAL, encode("string", "PCB-0001", length=4))).isError()
            finally:
                writer.close()

            _, second = await poll_and_normalise(adapter, normaliser)
    assert [r.kind for r in second] == ["telemetry", "event", "event", "event"]
    state_changed, fault, processed = events(second)
    assert state_changed["type"] == "station_state_changed"
    assert (state_changed["old_state"], state_changed["state"]) == (1100, 5000)
    assert fault["type"] == "fault_occurred"
    assert (fault["trigger"], fault["value"], fault["previous"]) == ("machine_state", DOWN, RUNNING)
    assert fault["fault_code"] == "OVEN-STOPPED"
    assert processed["type"] == "unit_processed"
    assert processed["serial"] == "PCB-0001"
    assert processed["values"] == {"zone1_top_actual": {"value": 235.5, "unit": "Cel"},
                                   "machine_state": {"value": DOWN, "unit": None}}
