"""Hypothesis: compact telemetry loses nothing. For any telemetry message the gateway encodes (good and bad
readings, odd timestamps, units that match the meta, differ from it or are missing from it, protocol
status fields, replayed), full -> compact -> `expand_compact` gives back the full message exactly; what
cannot be written compactly stays full, and a decoder holding another meta is refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emsedge import contract, schema

ENVELOPE_TS = "2026-01-01T00:00:00.000Z"

signal_names = st.text(alphabet="abcdefgz_0123456789.-", min_size=1, max_size=8)
units = st.sampled_from([None, "Cel", "kPa", "cm/min", "%", "", "µm"])
timestamps = st.sampled_from([ENVELOPE_TS, "2025-12-31T23:59:59.999Z", "1970-01-01T00:00:00.000Z",
                              "2026-01-01T00:00:00.001Z"])
json_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
)
extras = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["IllegalDataAddress", "BadNodeIdUnknown", schema.UNPROCESSABLE_STATUS]),
    "server_ts": timestamps,
    "reason": st.text(max_size=8),
    "raw": st.text(max_size=8),
})


@st.composite
def telemetry_records(draw: st.DrawFn) -> tuple[schema.Record, schema.TelemetryMeta]:
    names = draw(st.lists(signal_names, unique=True, max_size=12))
    meta_signals = {n: {"unit": draw(units)} for n in names if draw(st.booleans())}
    meta_signals.update({n: {"unit": draw(units), "type": "float32"} for n in draw(st.lists(signal_names, max_size=3))
                         if n not in names})
    meta = schema.TelemetryMeta.build("m-1", "reflow_oven", meta_signals)
    readings = []
    for name in names:
        unit = meta_signals[name]["unit"] if name in meta_signals and draw(st.booleans()) else draw(units)
        quality = draw(st.sampled_from(["good", "good", "uncertain", "bad"]))
        value = None if quality == "bad" and draw(st.booleans()) else draw(json_values)
        readings.append(schema.reading(name, value, unit=unit, quality=quality, ts=draw(timestamps),
                                       **draw(extras)))
    return schema.telemetry("m-1", "reflow_oven", readings, ts=ENVELOPE_TS), meta


@st.composite
def telemetry_messages(draw: st.DrawFn) -> tuple[bytes, schema.TelemetryMeta]:
    record, meta = draw(telemetry_records())
    payload = schema.encode(record, gateway="gw", seq=draw(st.integers(1, 2**40)), message_id="id-1")
    if draw(st.booleans()):
        payload = schema.mark_replayed(payload)
    return payload, meta


@settings(max_examples=200, deadline=None)
@given(case=telemetry_records(), seq=st.integers(1, 2**40), replayed=st.booleans())
def test_what_the_buffer_stores_compact_expands_to_what_it_would_store_full(
    case: tuple[schema.Record, schema.TelemetryMeta], seq: int, replayed: bool
) -> None:
    record, meta = case
    full = schema.encode(record, gateway="gw", seq=seq, message_id="id-1")
    compact = schema.encode_compact(record, gateway="gw", seq=seq, message_id="id-1", meta=meta)
    if replayed:
        full, compact = schema.mark_replayed(full), schema.mark_replayed(compact)
    assert schema.compact_meta_id(compact) == meta.id
    message = orjson.loads(compact)
    assert message == schema.compact_telemetry(orjson.loads(full), meta)  # one form, however it was written
    assert schema.expand_compact(message, meta) == orjson.loads(full)
    assert orjson.loads(schema.expand_payload(compact, meta)) == orjson.loads(full)
    readings = record.body["readings"]  # the column-wise fast path says what the reading loop says
    assert schema._compact_readings(readings, record.ts, meta.units) == schema._compact_readings_one_by_one(
        readings, record.ts, meta.units)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 50), unit=units, odd=st.integers(0, 60))
def test_a_common_poll_goes_the_fast_way_and_one_odd_reading_the_slow_way_alike(n: int, unit: Any, odd: int) -> None:
    readings = [schema.reading(f"s{i}", i * 0.5, unit=unit, ts=ENVELOPE_TS) for i in range(n)]
    if odd < n:
        readings[odd] = schema.reading(f"s{odd}", None, unit=unit, quality="bad", ts=ENVELOPE_TS, status="Timeout")
    meta = schema.TelemetryMeta.build("m-1", "press", {f"s{i}": {"unit": unit} for i in range(n)})
    compacted = schema._compact_readings(readings, ENVELOPE_TS, meta.units)
    assert compacted == schema._compact_readings_one_by_one(readings, ENVELOPE_TS, meta.units)
    assert compacted is not None
    assert compacted[1] == ({f"s{odd}": {"quality": "bad", "status": "Timeout"}} if odd < n else {})


@settings(max_examples=200, deadline=None)
@given(case=telemetry_messages())
def test_full_to_compact_to_expanded_is_the_full_message(case: tuple[bytes, schema.TelemetryMeta]) -> None:
    payload, meta = case
    full = orjson.loads(payload)
    compact_bytes = schema.compact_payload(payload, meta)
    compact = orjson.loads(compact_bytes)
    assert compact["schema"] == schema.SCHEMA_TELEMETRY_COMPACT
    schema.CompactTelemetryMessage.model_validate(compact)
    expanded = schema.expand_compact(compact, meta.message("gw"))
    assert expanded == full
    assert list(compact["v"]) == [r["signal"] for r in full["readings"]]  # order kept
    schema.TelemetryMessage.model_validate(expanded)


@settings(max_examples=100, deadline=None)
@given(case=telemetry_messages())
def test_a_decoder_holding_another_meta_is_refused(case: tuple[bytes, schema.TelemetryMeta]) -> None:
    payload, meta = case
    compact = orjson.loads(schema.compact_payload(payload, meta))
    other = schema.TelemetryMeta.build("m-1", "reflow_oven", {**meta.signals, "added_later": {"unit": "Cel"}})
    with pytest.raises(ValueError, match="written against meta"):
        schema.expand_compact(compact, other)


def test_a_message_naming_a_signal_twice_stays_in_the_full_form() -> None:
    readings = [schema.reading("a", 1, ts=ENVELOPE_TS), schema.reading("a", 2, ts=ENVELOPE_TS)]
    payload = schema.encode(schema.telemetry("m-1", "press", readings, ts=ENVELOPE_TS), gateway="gw", seq=1,
                            message_id="i")
    meta = schema.TelemetryMeta.build("m-1", "press", {"a": {"unit": None}})
    assert schema.compact_payload(payload, meta) is payload


def test_events_and_compact_messages_are_never_rewritten() -> None:
    meta = schema.TelemetryMeta.build("m-1", "press", {})
    event = schema.encode(schema.event("m-1", "press", schema.EventType.CONNECTION_RESTORED), gateway="gw", seq=1,
                          message_id="i")
    assert schema.compact_payload(event, meta) is event
    with pytest.raises(ValueError, match="not a compact telemetry message"):
        schema.expand_compact(orjson.loads(event), meta)


def test_the_documented_compact_example_expands_to_the_documented_full_example() -> None:
    examples: dict[str, Any] = contract.examples()
    full, compact = examples["telemetry"]
    assert schema.expand_compact(compact, examples["meta"][0]) == full
    assert compact["v"] == {"zone1_top_actual": 218.4, "conveyor_speed": 72.5, "board_count": None}
    assert compact["x"] == {"board_count": {"quality": "bad", "status": "IllegalDataAddress"}}


@st.composite
def regular_polls(draw: st.DrawFn) -> tuple[schema.Record, schema.Record, schema.TelemetryMeta]:
    """A poll whose readings are all good at the envelope's ts (what `PollReadings` promises), as a plain list
    and as `PollReadings`; the meta's units match the readings' or, sometimes, not (a config changed since)."""
    names = draw(st.lists(signal_names, unique=True, max_size=12))
    reading_units = [draw(units) for _ in names]
    meta_signals = {n: {"unit": u if draw(st.integers(0, 9)) else draw(units)}
                    for n, u in zip(names, reading_units, strict=True)}
    if names and draw(st.booleans()):
        meta_signals.pop(draw(st.sampled_from(names)))  # a signal the meta does not know
    meta = schema.TelemetryMeta.build("m-1", "reflow_oven", meta_signals)
    values = [draw(json_values) for _ in names]
    plain = [schema.reading(n, v, unit=u, ts=ENVELOPE_TS) for n, u, v in zip(names, reading_units, values, strict=True)]
    poll = schema.PollReadings(tuple(names), tuple(reading_units), values, ENVELOPE_TS)
    assert poll == plain and list(poll) == plain and len(poll) == len(plain)  # reads as the dicts it stands for
    return (schema.telemetry("m-1", "reflow_oven", plain, ts=ENVELOPE_TS),
            schema.telemetry("m-1", "reflow_oven", poll, ts=ENVELOPE_TS), meta)


@settings(max_examples=200, deadline=None)
@given(case=regular_polls(), again=st.booleans())
def test_a_regular_poll_is_written_from_its_columns_exactly_as_from_its_readings(
    case: tuple[schema.Record, schema.Record, schema.TelemetryMeta], again: bool
) -> None:
    plain, poll, meta = case
    expected = schema.encode_compact(plain, gateway="gw", seq=7, message_id="id-1", meta=meta)
    for _ in range(2 if again else 1):  # the second time through, the meta remembers the checked columns
        assert schema.encode_compact(poll, gateway="gw", seq=7, message_id="id-1", meta=meta) == expected
    assert schema.encode(poll, gateway="gw", seq=7, message_id="id-1") == schema.encode(
        plain, gateway="gw", seq=7, message_id="id-1")
