"""Request planning and block decoding of the Modbus adapter (pure functions, no network)."""

from __future__ import annotations

import itertools
import random
import struct
from typing import Any

import pytest

from emsedge.adapters.modbus.adapter import ModbusDecoder, plan_requests, signal_width
from emsedge.adapters.modbus.config import ModbusSignal


def sig(name: str, address: int, type_: str = "uint16", table: str = "holding", **kw: Any) -> ModbusSignal:
    return ModbusSignal(name=name, table=table, address=address, type=type_, **kw)  # type: ignore[arg-type]


def spans(requests: list[Any]) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in requests]


def test_contiguous_signals_become_one_request() -> None:
    signals = [sig("a", 0, "float32"), sig("b", 2, "uint16"), sig("c", 3, "int64")]
    assert spans(plan_requests(signals)) == [("holding", 0, 7)]


def test_small_gaps_are_read_through_and_large_gaps_split() -> None:
    signals = [sig("a", 0), sig("b", 9), sig("c", 30)]
    assert spans(plan_requests(signals, max_gap=8)) == [("holding", 0, 10), ("holding", 30, 1)]
    assert spans(plan_requests(signals, max_gap=0)) == [("holding", 0, 1), ("holding", 9, 1), ("holding", 30, 1)]
    assert spans(plan_requests(signals, max_gap=20)) == [("holding", 0, 31)]


def test_no_request_exceeds_the_register_cap_and_no_value_is_split() -> None:
    signals = [sig(f"f{a}", a, "float32") for a in range(0, 400, 2)]
    requests = plan_requests(signals, max_registers=125)
    assert spans(requests) == [("holding", 0, 124), ("holding", 124, 124), ("holding", 248, 124),
                               ("holding", 372, 28)]


def test_each_table_gets_its_own_requests_and_bits_use_the_bit_cap() -> None:
    signals = [
        sig("h", 0), sig("i", 0, table="input"),
        *[sig(f"c{n}", n, "bool", table="coil") for n in range(2500)],
        sig("d", 7, "bool", table="discrete"),
    ]
    assert spans(plan_requests(signals, max_bits=2000)) == [
        ("holding", 0, 1), ("input", 0, 1), ("coil", 0, 2000), ("coil", 2000, 500), ("discrete", 7, 1),
    ]


def test_overlapping_signals_share_a_request() -> None:
    signals = [sig("whole", 10, "uint32"), sig("high", 10, "uint16"), sig("low", 11, "uint16")]
    assert spans(plan_requests(signals)) == [("holding", 10, 2)]


def test_a_value_wider_than_the_cap_gets_a_request_of_its_own() -> None:
    signals = [sig("a", 0), sig("text", 1, "string", length=20), sig("b", 21)]
    assert spans(plan_requests(signals, max_registers=10, max_gap=0)) == [
        ("holding", 0, 1), ("holding", 1, 20), ("holding", 21, 1),
    ]


def test_random_layouts_cover_every_signal_exactly_once_within_the_caps() -> None:
    rng = random.Random(7)
    types = ["uint16", "int32", "float32", "float64", "uint64"]
    for _ in range(200):
        signals = [
            sig(f"s{n}", rng.randrange(0, 3000), rng.choice(types), table=rng.choice(["holding", "input"]))
            for n in range(rng.randrange(1, 120))
        ]
        cap, gap = rng.randrange(4, 126), rng.randrange(0, 12)
        requests = plan_requests(signals, max_registers=cap, max_gap=gap)
        served = sorted(i for r in requests for i in r.signals)
        assert served == list(range(len(signals)))
        for r in requests:
            assert r.count <= cap
            for i in r.signals:
                s = signals[i]
                assert s.table == r.table
                assert r.address <= s.address
                assert s.address + signal_width(s) <= r.address + r.count
        # Fewest requests: any two consecutive requests of a table could not have been one.
        by_table: dict[str, list[Any]] = {}
        for r in requests:
            by_table.setdefault(r.table, []).append(r)
        for rs in by_table.values():
            for a, b in itertools.pairwise(rs):
                assert b.address - (a.address + a.count) > gap or b.address + b.count - a.address > cap or any(
                    signals[i].address + signal_width(signals[i]) - a.address > cap for i in b.signals
                )


def test_overlapping_values_of_different_orders_decode_from_one_block() -> None:
    signals = [
        sig("abcd", 0, "uint32"),
        sig("cdab", 0, "uint32", word_order="little"),
        sig("badc", 0, "uint32", byte_order="little"),
        sig("dcba", 0, "uint32", word_order="little", byte_order="little"),
        sig("hi", 0, "uint16"),
        sig("lo", 1, "uint16"),
        sig("hi_le", 0, "uint16", byte_order="little"),
    ]
    decoder = ModbusDecoder(signals)
    assert len(decoder.blocks) == 1
    poll = decoder.new_poll()
    decoder.decode_registers(decoder.blocks[0], [0x0102, 0x0304], poll)
    values = {r["signal"]: r["value"] for r in decoder.readings(poll, "t")}
    be = lambda b: struct.unpack(">I", bytes(b))[0]  # noqa: E731
    assert values == {
        "abcd": be([1, 2, 3, 4]), "cdab": be([3, 4, 1, 2]), "badc": be([2, 1, 4, 3]), "dcba": be([4, 3, 2, 1]),
        "hi": 0x0102, "lo": 0x0304, "hi_le": 0x0201,
    }


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_bad_and_null(bad: float) -> None:
    decoder = ModbusDecoder([sig("t", 0, "float32"), sig("u", 2, "uint16")])
    raw = struct.unpack(">2H", struct.pack(">f", bad))
    poll = decoder.new_poll()
    decoder.decode_registers(decoder.blocks[0], [*raw, 5], poll)
    out = decoder.readings(poll, "t")
    assert type(out) is list  # a bad reading: dicts, not columns
    assert out[0]["value"] is None
    assert out[0]["quality"] == "bad"
    assert out[1]["value"] == 5
    assert out[1]["quality"] == "good"
