"""Fuzzing every equipment-side decoder: whatever the equipment sends, the only outcomes are a record the
encoder accepts (good or bad-quality readings) or a counted rejection (S9F7, a bad block status); never an
exception escaping the decoder.

* OPC UA: any Variant value (nested arrays, 64+-bit integers, NaN, undecodable text, odd timestamps,
  any status code) -> `reading_from_datavalue`.
* SECS-II: any bytes and any item tree -> `decode` with the link's budget -> the GEM host's primary
  handler, with a stand-in link that records what would be sent.
* Modbus: any answer PDU to any read -> pymodbus' PDU decoder with our registered responses ->
  `ModbusDecoder.decode_answer`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from typing import Any

import anyio
import pytest
from asyncua import ua
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.hsms.config import HsmsEquipment
from emsedge.adapters.hsms.connection import Message
from emsedge.adapters.hsms.gem import HsmsAdapter
from emsedge.adapters.hsms.secs2 import DecodeBudget, Item, Secs2DecodeError, decode, encode
from emsedge.adapters.modbus.adapter import ModbusDecoder
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.adapters.opcua.config import OpcUaSignal
from emsedge.adapters.opcua.convert import reading_from_datavalue
from emsedge.compat import tolerant_responses
from emsedge.schema import Record, telemetry
from emsedge.schema import encode as encode_record

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def encodable(record: Record) -> None:
    encode_record(record, gateway="gw", seq=1, message_id="m")


# ---------------------------------------------------------------------------------------------------
# OPC UA

_raw_text = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), _raw_text, st.text(max_size=20),
    st.binary(max_size=40),
    st.datetimes(min_value=dt.datetime(1601, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    _raw_text.map(ua.LocalizedText), st.integers(0, 2**32 - 1).map(ua.StatusCode),
    st.tuples(st.integers(0, 65535), _raw_text).map(lambda p: ua.NodeId(p[1], p[0])),
    st.tuples(st.floats(), st.floats()).map(lambda p: ua.Range(Low=p[0], High=p[1])),
)  # fmt: skip
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=30)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@given(
    value=st.one_of(_values, st.integers(1, 400).map(_deep)),
    status=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    times=st.tuples(*[st.one_of(st.none(), st.datetimes(min_value=dt.datetime(1601, 1, 1)))] * 2),
    encoding=st.sampled_from(["utf-8", "latin-1", "cp1252", "shift_jis"]),
)
@settings(max_examples=400, deadline=None)
def test_any_opcua_value_becomes_an_encodable_reading(
    value: Any, status: int | None, times: tuple[dt.datetime | None, dt.datetime | None], encoding: str
) -> None:
    signal = OpcUaSignal(name="s", node="ns=2;s=S")
    variant = ua.Variant(0, ua.VariantType.Int64)
    object.__setattr__(variant, "Value", value)  # what the wire decoder may hand over, unguessable types too
    dv = ua.DataValue(
        variant, StatusCode=ua.StatusCode(status) if status is not None else None,
        SourceTimestamp=times[0], ServerTimestamp=times[1],
    )
    r = reading_from_datavalue(signal, dv, 1_700_000_000.0, encoding)
    assert r["quality"] in ("good", "uncertain", "bad")
    assert r["quality"] != "bad" or r["value"] is None
    assert r["ts"] >= "1601-01-02"  # MinValue (1601-01-01) means no time: never published
    encodable(telemetry("eq", "other", [r]))


# ---------------------------------------------------------------------------------------------------
# SECS-II / GEM

_INT_RANGES = {"I1": 7, "I2": 15, "I4": 31, "I8": 63, "U1": 8, "U2": 16, "U4": 32, "U8": 64}
_leaves = st.one_of(
    st.binary(max_size=20).map(lambda b: Item("B", b)),
    st.lists(st.booleans(), max_size=3).map(lambda v: Item("BOOLEAN", tuple(v))),
    st.text(st.characters(max_codepoint=255), max_size=20).map(lambda s: Item("A", s)),
    *[
        st.lists(st.integers(-(2**bits) if f.startswith("I") else 0, 2**bits - 1), max_size=3).map(
            lambda v, f=f: Item(f, tuple(v)))
        for f, bits in _INT_RANGES.items()
    ],
    st.lists(st.floats(allow_nan=True), max_size=3).map(lambda v: Item("F8", tuple(v))),
)  # fmt: skip
_trees = st.recursive(_leaves, lambda c: st.lists(c, max_size=4).map(lambda x: Item("L", tuple(x))), max_leaves=25)


def _report(dataid: Item, ceid: Item, reports: list[tuple[Item, list[Item]]]) -> Item:
    return Item("L", (dataid, ceid, Item("L", tuple(Item("L", (r, Item("L", tuple(v)))) for r, v in reports))))


_shaped = st.builds(_report, _trees, _trees, st.lists(st.tuples(_trees, st.lists(_trees, max_size=3)), max_size=3))
_alarms = st.builds(lambda a, b, c: Item("L", (a, b, c)), _trees, _trees, _trees)


class _Link:
    """Stands in for HsmsLink: records the answers the handler would send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_s9(self, function: int, offending: object) -> None:
        self.sent.append(f"S9F{function}")

    async def reply(self, primary: Message, stream: int, function: int, body: Item | None = None) -> None:
        self.sent.append(f"S{stream}F{function}")


def _host() -> HsmsAdapter:
    config = HsmsEquipment.model_validate({
        "id": "aoi-1", "type": "aoi", "adapter": "hsms",
        "reports": [{"rptid": 100, "vids": [1, 2, 3], "names": ["board_serial", "result", "defects"]}],
        "events": [{"name": "inspected", "ceid": 10, "reports": [100], "emit": "unit_inspected",
                    "serial": "board_serial", "result": "result", "defects": "defects"},
                   {"name": "state", "ceid": 11, "reports": [100]}],
    })  # fmt: skip

    async def emit(records: Any) -> None:
        return None

    return HsmsAdapter(AdapterContext(equipment=config, emit=emit))


def _serve_one(stream: int, function: int, wire: bytes) -> tuple[list[str], list[Record]]:
    """Decode `wire` as the link does and hand the message to the GEM host; what it answered and queued."""

    async def run() -> tuple[list[str], list[Record]]:
        link = _Link()
        try:
            body = decode(wire, DecodeBudget()) if wire else None
        except Secs2DecodeError:
            return ["S9F7"], []
        host = _host()
        send, receive = anyio.create_memory_object_stream[Any](100)
        host._deliveries = send
        with send, receive:
            await host._on_primary(link, Message(stream, function, body, True, 1, 0, bytes(10), len(wire)))  # type: ignore[arg-type]
            queued = []
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    queued.append(receive.receive_nowait().record)
        return link.sent, queued

    return anyio.run(run)


def _check(sent: list[str], queued: list[Record]) -> None:
    for record in queued:
        encodable(record)
    assert bool(queued) != bool(sent == ["S9F7"]), (sent, queued)


@given(st.sampled_from([(6, 11), (5, 1), (10, 1), (1, 1), (1, 13), (6, 1), (2, 99), (77, 1)]),
       st.one_of(_trees, _shaped, _alarms))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_secs_item_tree_is_recorded_or_answered_s9f7(key: tuple[int, int], body: Item) -> None:
    sent, queued = _serve_one(*key, encode(body))
    if key in ((6, 11), (5, 1)):
        _check(sent, queued)
    else:
        assert not queued and len(sent) == 1


@given(st.binary(max_size=200), st.sampled_from([(6, 11), (5, 1)]))
@settings(max_examples=500, deadline=None)
def test_any_secs_bytes_are_recorded_or_answered_s9f7(wire: bytes, key: tuple[int, int]) -> None:
    if not wire:
        wire = b"\x01\x00"
    sent, queued = _serve_one(*key, wire)
    _check(sent, queued)


@given(st.integers(1, 3000))
@settings(max_examples=30, deadline=None)
def test_any_nesting_depth_is_recorded_or_answered_s9f7(depth: int) -> None:
    value = bytes([0x01, 0x01]) * depth + bytes([0x01, 0x00])
    placeholder = encode(_report(Item("U4", (1,)), Item("U4", (10,)), [(Item("U4", (100,)), [Item("L", ())])]))
    sent, queued = _serve_one(6, 11, placeholder[:-2] + value)  # the report's one value nested `depth` deep
    _check(sent, queued)
    assert (depth <= 28) == bool(queued)


# ---------------------------------------------------------------------------------------------------
# Modbus

_MODBUS = ModbusEquipment.model_validate({
    "id": "press-1", "type": "other", "adapter": "modbus", "connection": {"host": "127.0.0.1", "port": 502},
    "signals": [
        {"name": "f", "table": "holding", "address": 0, "type": "float32"},
        {"name": "s", "table": "holding", "address": 2, "type": "string", "length": 2},
        {"name": "i", "table": "input", "address": 0, "type": "int64", "word_order": "little"},
        {"name": "c", "table": "coil", "address": 3, "type": "bool"},
        {"name": "d", "table": "discrete", "address": 0, "type": "bool"},
        {"name": "d2", "table": "discrete", "address": 12, "type": "bool"},
    ],
})  # fmt: skip


def _pdu_decoder() -> Any:
    from pymodbus.pdu import DecodePDU  # noqa: PLC0415

    decoder = DecodePDU(False)
    for response in tolerant_responses():
        decoder.register(response)
    return decoder


_PDU = _pdu_decoder()
_DECODER = ModbusDecoder(_MODBUS.signals)


@given(st.integers(0, len(_DECODER.blocks) - 1), st.binary(min_size=1, max_size=40),
       st.sampled_from([None, 1, 2, 3, 4]))
@settings(max_examples=2000, deadline=None)
def test_any_modbus_answer_is_decoded_or_marks_its_block_bad(index: int, pdu: bytes, fc: int | None) -> None:
    if fc is not None:
        pdu = bytes([fc]) + pdu
    block = _DECODER.blocks[index]
    rr = _PDU.decode(pdu)
    if rr is None:  # pymodbus cannot frame it at all: no answer, i.e. a timeout (transient), never wrong data
        assert pdu[0] == 0 or pdu[0] >= 0x80
        return
    poll = _DECODER.new_poll()
    problem = _DECODER.decode_answer(block, rr, poll)
    out = _DECODER.readings(poll, "2026-01-01T00:00:00.000Z")
    readings = [out[i] for i in block.request.signals]
    assert all(r is not None for r in readings)
    for r in readings:
        assert r is not None
        if problem is None:
            assert r["quality"] in ("good", "bad")
            assert not isinstance(r["value"], float) or math.isfinite(r["value"])
        else:
            assert (r["quality"], r["value"], r["status"]) == ("bad", None, problem)
    encodable(telemetry("press-1", "other", [r for r in readings if r is not None]))
