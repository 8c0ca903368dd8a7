"""Hypothesis: any reading value or event field, however hostile, is encoded as it is or replaced by
something that encodes (a bad reading or an `unprocessable` event); `encode` of the replacement never raises
and good readings beside the poison are kept unchanged."""

from __future__ import annotations

import inspect
import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from emsedge import schema

TS = "2026-01-01T00:00:00.000Z"

leaves = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(),
    st.text(alphabet=st.sampled_from(["a", "\u00e9", "\udcb0", "\ud800", "\uffff", "\x00"])),  # undecoded bytes
    st.binary(max_size=16),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4),
    max_leaves=30,
)


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def outcome(record: schema.Record) -> dict[str, Any]:
    try:
        payload = schema.encode(record, gateway="gw", seq=1, message_id="m")
    except Exception as exc:
        replacement, problems = schema.unprocessable(record, exc)
        assert problems
        payload = schema.encode(replacement, gateway="gw", seq=1, message_id="m")
    decoded: dict[str, Any] = json.loads(payload)
    return decoded


@settings(max_examples=300, deadline=None)
@given(value=values, depth=st.sampled_from([0, 0, 0, 260]))
def test_any_reading_value_is_encoded_or_replaced_by_a_bad_reading(value: Any, depth: int) -> None:
    good = schema.reading("good", 1.0, ts=TS)
    record = schema.telemetry("m-1", "press", [good, schema.reading("v", nested(depth, value), ts=TS)], ts=TS)
    message = outcome(record)
    assert message["readings"][0] == good
    second = message["readings"][1]
    if second.get("status") == schema.UNPROCESSABLE_STATUS:
        assert second["quality"] == "bad" and second["value"] is None
        assert second["raw"].isascii() and len(second["raw"]) <= schema.RAW_LIMIT
    schema.TelemetryMessage.model_validate(message)


# Declared fields (`serial`, `values`, ...) are typed and refused at construction by `schema.event` (a
# programming error in an adapter), and `event()`'s own parameters are not fields; the hostile part is the
# free-form extras a trigger's `fields` carry.
DECLARED = set(schema.UnitProcessed.model_fields) | set(inspect.signature(schema.event).parameters)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in DECLARED), values, max_size=4))
def test_any_event_fields_are_encoded_or_replaced_by_an_unprocessable_event(fields: dict[str, Any]) -> None:
    message = outcome(schema.event("m-1", "press", "unit_processed", TS, **fields))
    schema.EventMessage.model_validate(message)
    if message["event"]["type"] == "unprocessable":
        assert message["event"]["original_type"] == "unit_processed"
        orjson.dumps(message)
