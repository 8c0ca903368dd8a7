"""The Modbus adapter against a server that answers malformed frames (tests/support/hostile_modbus.py).

Every malformed answer must mark only its own block bad, with a status naming what was wrong, and
never take the machine offline (no AdapterError, no reconnect): the other blocks stay good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from support.hostile_modbus import MODES, HostileModbus

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.adapter import ModbusAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.schema import Record

SIGNALS: list[dict[str, Any]] = [
    {"name": "temp", "table": "holding", "address": 0, "type": "uint16"},
    {"name": "speed", "table": "holding", "address": 1, "type": "uint16"},
    {"name": "door", "table": "coil", "address": 0, "type": "bool"},
    {"name": "lamp", "table": "coil", "address": 9, "type": "bool"},
    {"name": "alarm", "table": "discrete", "address": 4, "type": "bool"},
    {"name": "pressure", "table": "input", "address": 10, "type": "uint16"},
]


def adapter(port: int) -> ModbusAdapter:
    eq = ModbusEquipment.model_validate({
        "id": "press-1", "type": "other", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout": "500ms"},
        "poll_interval": "100ms", "signals": SIGNALS,
    })

    async def emit(records: Sequence[Record]) -> None:
        return None

    return ModbusAdapter(AdapterContext(equipment=eq, emit=emit))


async def poll_twice(mode: str) -> dict[str, dict[str, Any]]:
    async with HostileModbus(MODES[mode]) as server, adapter(server.port) as a:
        await a.poll()
        records = await a.poll()  # the same connection still works after the malformed answer
    return {r["signal"]: r for r in records[0].body["readings"]}


@pytest.mark.asyncio
async def test_a_well_formed_server_gives_good_readings() -> None:
    readings = await poll_twice("good")
    assert {n: (r["quality"], r["value"]) for n, r in readings.items()} == {
        "temp": ("good", 0), "speed": ("good", 1), "door": ("good", True), "lamp": ("good", False),
        "alarm": ("good", True), "pressure": ("good", 10),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mode", "bad", "status"),
    [
        ("short_bits", {"door", "lamp", "alarm"}, "ShortResponse"),
        ("wrong_function", {"temp", "speed"}, "WrongFunction"),
        ("lying_byte_count", {"temp", "speed", "pressure"}, "WrongByteCount"),
        ("empty_pdu", {"temp", "speed", "pressure"}, "WrongByteCount"),
        ("unknown_function", {"temp", "speed", "pressure"}, "WrongFunction"),
    ],
)
async def test_a_malformed_answer_marks_only_its_block_bad_with_a_precise_status(
    mode: str, bad: set[str], status: str
) -> None:
    readings = await poll_twice(mode)
    assert {n for n, r in readings.items() if r["quality"] == "bad"} == bad
    assert {readings[n]["status"] for n in bad} == {status}
    assert all(r["value"] is None for n, r in readings.items() if n in bad)
    assert all(r["value"] is not None for n, r in readings.items() if n not in bad)
