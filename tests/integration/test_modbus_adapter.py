"""The Modbus adapter against a real pymodbus server with known register contents."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import pytest
from modbus_server import ModbusTestServer, RegisterImage, free_port

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.adapter import ModbusAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.errors import AdapterError
from emsedge.schema import PollReadings, Record, TelemetryMessage, encode

NUMERIC = {
    "int16": -12345, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_000,
    "int64": -(2**62) + 12345, "uint64": 2**64 - 12345, "float32": 21.5, "float64": -1234.0625,
}  # fmt: skip
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}
ORDERS = list(itertools.product(("big", "little"), ("big", "little")))


def equipment(port: int, signals: list[dict[str, Any]], **extra: Any) -> ModbusEquipment:
    return ModbusEquipment.model_validate(
        {
            "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus",
            "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout": "500ms"},
            "poll_interval": "100ms", "signals": signals, **extra,
        }
    )


def context(eq: ModbusEquipment) -> AdapterContext:
    emitted: list[Record] = []

    async def emit(records: Sequence[Record]) -> None:
        emitted.extend(records)

    return AdapterContext(equipment=eq, emit=emit)


def by_signal(readings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["signal"]: r for r in readings}


def typed_layout() -> tuple[RegisterImage, list[dict[str, Any]], dict[str, Any]]:
    """Every numeric type in every word/byte order, plain and scaled, laid out in holding registers."""
    image = RegisterImage()
    signals: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    address = 0
    for type_, value in NUMERIC.items():
        for word_order, byte_order in ORDERS:
            if WIDTH[type_] == 1 and word_order == "little":
                continue  # word order means nothing for one register
            for scaled in (False, True):
                name = f"{type_}_{word_order}_{byte_order}{'_scaled' if scaled else ''}"
                image.put(address, type_, value, word_order=word_order, byte_order=byte_order)
                sig: dict[str, Any] = {"name": name, "table": "holding", "address": address, "type": type_,
                                       "word_order": word_order, "byte_order": byte_order}
                if scaled:
                    sig.update(scale=0.5, offset=-3)
                    expected[name] = value * 0.5 - 3
                else:
                    expected[name] = value
                signals.append(sig)
                address += WIDTH[type_] + 1  # one spare register between values: gaps get merged
    return image, signals, expected


@pytest.mark.asyncio
async def test_every_type_and_word_and_byte_order_decodes_to_the_value_the_server_holds() -> None:
    image, signals, expected = typed_layout()
    async with ModbusTestServer(holding=image.registers(len(image.cells) + len(signals) + 10)) as server:
        adapter = ModbusAdapter(context(equipment(server.port, signals)))
        readings = by_signal(await adapter.read_once())
    assert set(readings) == set(expected)
    for name, want in expected.items():
        got = readings[name]
        assert got["quality"] == "good", name
        if isinstance(want, float) or name.startswith("float"):
            assert math.isclose(got["value"], want, rel_tol=1e-6), (name, got["value"], want)
        else:
            assert got["value"] == want, (name, got["value"], want)
            assert type(got["value"]) is int, name


@pytest.mark.asyncio
async def test_unscaled_integers_stay_integers_and_scaled_values_apply_scale_then_offset() -> None:
    image = RegisterImage()
    image.put(0, "uint16", 523)
    image.put(1, "uint16", 523)
    image.put(2, "int32", -40, word_order="little")
    signals = [
        {"name": "raw", "table": "holding", "address": 0, "type": "uint16"},
        {"name": "speed", "table": "holding", "address": 1, "type": "uint16", "scale": 0.1, "unit": "cm/min"},
        {"name": "temp", "table": "holding", "address": 2, "type": "int32", "word_order": "little",
         "scale": 0.5, "offset": 273.15, "unit": "K"},
    ]
    async with ModbusTestServer(holding=image.registers(10)) as server:
        readings = by_signal(await ModbusAdapter(context(equipment(server.port, signals))).read_once())
    assert readings["raw"]["value"] == 523
    assert isinstance(readings["raw"]["value"], int)
    assert readings["speed"]["value"] == pytest.approx(52.3)
    assert readings["speed"]["unit"] == "cm/min"
    assert readings["temp"]["value"] == pytest.approx(-20 + 273.15)


@pytest.mark.asyncio
async def test_bits_of_registers_coils_discrete_inputs_and_strings_decode() -> None:
    image = RegisterImage()
    image.cells[0] = 0b1000_0000_0000_0101
    image.put(4, "string", "OVEN-7", length=5)
    image.put(20, "string", "AB12", length=2, byte_order="little")
    inputs = RegisterImage()
    inputs.cells[3] = 0x0002
    signals = [
        {"name": "b0", "table": "holding", "address": 0, "type": "bool", "bit": 0},
        {"name": "b1", "table": "holding", "address": 0, "type": "bool", "bit": 1},
        {"name": "b2", "table": "holding", "address": 0, "type": "bool", "bit": 2},
        {"name": "b15", "table": "holding", "address": 0, "type": "bool", "bit": 15},
        {"name": "in_b1", "table": "input", "address": 3, "type": "bool", "bit": 1},
        {"name": "recipe", "table": "holding", "address": 4, "type": "string", "length": 5},
        {"name": "lot", "table": "holding", "address": 20, "type": "string", "length": 2, "byte_order": "little"},
        {"name": "coil0", "table": "coil", "address": 0, "type": "bool"},
        {"name": "coil1", "table": "coil", "address": 1, "type": "bool"},
        {"name": "coil17", "table": "coil", "address": 17, "type": "bool"},
        {"name": "door_open", "table": "discrete", "address": 5, "type": "bool"},
        {"name": "door_locked", "table": "discrete", "address": 6, "type": "bool"},
    ]
    coils = [False] * 32
    coils[0] = coils[17] = True
    discrete = [False] * 16
    discrete[5] = True
    async with ModbusTestServer(holding=image.registers(30), input=inputs.registers(10), coils=coils,
                                discrete=discrete) as server:
        r = by_signal(await ModbusAdapter(context(equipment(server.port, signals))).read_once())
    values = {name: reading["value"] for name, reading in r.items()}
    assert values == {
        "b0": True, "b1": False, "b2": True, "b15": True, "in_b1": True, "recipe": "OVEN-7", "lot": "AB12",
        "coil0": True, "coil1": False, "coil17": True, "door_open": True, "door_locked": False,
    }


@pytest.mark.asyncio
async def test_signals_are_read_with_the_fewest_requests_and_readings_keep_config_order() -> None:
    image = RegisterImage()
    for a in range(0, 300, 2):
        image.put(a, "float32", a / 2)
    # 150 float32 over 300 registers: 3 reads of at most 125 registers (124 + 124 + 52), in reverse order.
    signals = [{"name": f"t{a}", "table": "holding", "address": a, "type": "float32"} for a in range(298, -1, -2)]
    async with ModbusTestServer(holding=image.registers(300)) as server:
        adapter = ModbusAdapter(context(equipment(server.port, signals)))
        async with adapter:
            before = server.requests
            records = await adapter.poll()
            sent = server.requests - before
    readings = records[0].body["readings"]
    assert sent == 3
    assert adapter.requests_sent == 3
    # every reading good: the record carries its columns for the compact encoder, and they agree
    assert isinstance(readings, PollReadings)
    assert list(readings.names) == [r["signal"] for r in readings]
    assert readings.values == [r["value"] for r in readings]
    assert [r["signal"] for r in readings] == [s["name"] for s in signals]
    assert all(r["value"] == int(r["signal"][1:]) / 2 for r in readings)


@pytest.mark.asyncio
async def test_an_exception_response_marks_only_that_blocks_readings_bad() -> None:
    image = RegisterImage()
    image.put(0, "uint16", 7)
    signals = [
        {"name": "ok", "table": "holding", "address": 0, "type": "uint16"},
        {"name": "beyond_1", "table": "holding", "address": 500, "type": "float32"},
        {"name": "beyond_2", "table": "holding", "address": 502, "type": "uint16"},
        {"name": "inp", "table": "input", "address": 1, "type": "int16"},
    ]
    async with ModbusTestServer(holding=image.registers(10), input=[0, 0xFFFF]) as server:
        readings = by_signal(await ModbusAdapter(context(equipment(server.port, signals))).read_once())
    assert readings["ok"] == {"signal": "ok", "value": 7, "unit": None, "quality": "good", "ts": readings["ok"]["ts"]}
    assert readings["inp"]["value"] == -1
    for name in ("beyond_1", "beyond_2"):
        assert readings[name]["quality"] == "bad"
        assert readings[name]["value"] is None
        assert readings[name]["status"] == "IllegalDataAddress"


@pytest.mark.asyncio
async def test_nan_and_infinity_become_bad_readings_without_a_value() -> None:
    image = RegisterImage()
    image.put(0, "float32", float("nan"))
    image.put(2, "float64", float("inf"))
    image.put(6, "float32", 1.25)
    signals = [
        {"name": "nan", "table": "holding", "address": 0, "type": "float32"},
        {"name": "inf", "table": "holding", "address": 2, "type": "float64", "scale": 2},
        {"name": "fine", "table": "holding", "address": 6, "type": "float32"},
    ]
    async with ModbusTestServer(holding=image.registers(10)) as server:
        adapter = ModbusAdapter(context(equipment(server.port, signals)))
        async with adapter:
            record = (await adapter.poll())[0]
    assert type(record.body["readings"]) is list  # a bad reading: no column claim, the encoder checks each
    readings = by_signal(record.body["readings"])
    assert readings["nan"]["value"] is None
    assert readings["nan"]["quality"] == "bad"
    assert readings["inf"]["value"] is None
    assert readings["inf"]["quality"] == "bad"
    assert readings["fine"] == {**readings["fine"], "value": 1.25, "quality": "good"}
    # The record is valid on the wire: JSON without NaN, accepted by the contract model.
    payload = encode(record, gateway="gw", seq=1, message_id="00000000-0000-0000-0000-000000000001")
    assert b"NaN" not in payload
    assert b"Infinity" not in payload
    TelemetryMessage.model_validate_json(payload)


@pytest.mark.asyncio
async def test_connecting_to_a_closed_port_raises_a_transient_adapter_error() -> None:
    adapter = ModbusAdapter(context(equipment(free_port(), [{"name": "x", "table": "holding", "address": 0}])))
    with pytest.raises(AdapterError) as info:
        async with adapter:
            pass
    assert info.value.transient
    offline = adapter.offline_records("gone")[0].body["readings"]
    assert offline[0]["quality"] == "bad"
    assert offline[0]["value"] is None


@pytest.mark.asyncio
async def test_register_answers_are_kept_as_raw_bytes_and_decoded_in_one_call() -> None:
    image = RegisterImage()
    image.put(0, "uint32", 0x01020304)
    signals = [{"name": "v", "table": "input", "address": 0, "type": "uint32", "word_order": "little"}]
    async with ModbusTestServer(input=image.registers(4)) as server:
        adapter = ModbusAdapter(context(equipment(server.port, signals)))
        async with adapter:
            rr = await adapter._client.read_input_registers(0, count=2, device_id=1)
            records = await adapter.poll()
    assert rr.raw == bytes([1, 2, 3, 4])
    assert rr.registers == [0x0102, 0x0304]
    assert "registers=2" in str(rr)
    assert records[0].body["readings"][0]["value"] == 0x03040102
