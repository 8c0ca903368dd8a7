"""Poison isolation: a record the encoder raises on never stops the buffer's writer or its batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs
from test_buffer import announcements, rec, running

from emsedge import schema
from emsedge.buffer import export

TS = "2026-01-01T00:00:00.000Z"


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


POISON: dict[str, tuple[Any, str]] = {
    "latin1_byte": (b"25 \xb0C".decode("utf-8", "surrogateescape"), "string not valid UTF-8 (undecoded bytes)"),
    "deep_nesting": (nested(300), "nested deeper than 200 levels"),
    "huge_int": (2**70, "integer outside 64 bits"),
    "negative_huge_int": (-(2**64), "integer outside 64 bits"),
}


def payloads(db: Path) -> list[dict[str, Any]]:
    return [json.loads(r["payload"]) for r in export(db) if r["equipment"] != schema.GATEWAY_EQUIPMENT]


@pytest.mark.parametrize("name", sorted(POISON))
@pytest.mark.asyncio
async def test_an_unencodable_reading_becomes_a_bad_reading_and_the_rest_of_the_batch_commits(
    tmp_path: Path, name: str
) -> None:
    value, reason = POISON[name]
    with pytest.raises((orjson.JSONEncodeError, TypeError)):
        schema.encode(schema.telemetry("x", "y", [schema.reading("s", value, ts=TS)], ts=TS), gateway="g", seq=1,
                      message_id="m")
    db = tmp_path / "b.db"
    poisoned = schema.telemetry(
        "opcua-1", "press", [schema.reading("good", 1.5, ts=TS), schema.reading("label", value, ts=TS)], ts=TS
    )
    async with running(db) as buf:
        with capture_logs() as logs:
            result = await buf.append([rec("modbus-1", 1.0), poisoned, rec("modbus-1", 2.0)])
            await buf.append([poisoned])
        assert (result.accepted, result.refused) == (3, 0)
        assert buf.stats().losses == {"opcua-1": {"unprocessable": 2}}
        more = await buf.append([rec("modbus-1", 3.0)])  # the writer is alive
        assert more.accepted == 1
    sent = payloads(db)
    assert [p["equipment"] for p in sent] == ["modbus-1", "opcua-1", "modbus-1", "opcua-1", "modbus-1"]
    good, bad = sent[1]["readings"]
    assert good == schema.reading("good", 1.5, ts=TS)
    assert bad["signal"] == "label" and bad["value"] is None and bad["quality"] == "bad"
    assert bad["status"] == "Unprocessable" and bad["reason"] == reason
    assert bad["raw"].isascii() and len(bad["raw"]) <= schema.RAW_LIMIT
    schema.TelemetryMessage.model_validate(sent[1])
    (note,) = announcements(db)
    assert note["by_reason"] == {"unprocessable": 2} and note["by_equipment"] == {"opcua-1": 2}
    assert note["dropped_seqs"] == []  # the seq went out, as the replacement
    errors = [e for e in logs if e["event"] == "record_unprocessable" and e["log_level"] == "error"]
    assert len(errors) == 1  # once per equipment, signal and reason; repeats at debug
    assert (errors[0]["equipment"], errors[0]["signal"], errors[0]["reason"]) == ("opcua-1", "label", reason)


@pytest.mark.asyncio
async def test_the_raw_latin1_value_is_escaped_not_lost(tmp_path: Path) -> None:
    value = b"25 \xb0C".decode("utf-8", "surrogateescape")
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.append([schema.telemetry("opcua-1", "press", [schema.reading("t", value, ts=TS)], ts=TS)])
    (sent,) = payloads(db)
    assert sent["readings"][0]["raw"] == "'25 \\udcb0C'"


@pytest.mark.asyncio
async def test_an_unencodable_event_becomes_an_unprocessable_event_naming_the_field(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    bad_event = schema.event("gem-1", "mounter", "unit_processed", TS, fields={"count": 2**65}, serial="B1")
    deep_event = schema.event("gem-1", "mounter", "collection_event", TS, ceid=7,
                              values={"reports": nested(260)})
    async with running(db) as buf:
        result = await buf.append([rec("modbus-1"), bad_event, deep_event])
        assert result.accepted == 3
        assert buf.stats().losses == {"gem-1": {"unprocessable": 2}}
    _, first, second = payloads(db)
    for message in (first, second):
        schema.EventMessage.model_validate(message)
        assert message["event"]["type"] == "unprocessable"
    assert first["event"]["original_type"] == "unit_processed"
    assert first["event"]["signal"] == "event.fields.count"
    assert first["event"]["reason"] == "integer outside 64 bits"
    assert first["event"]["raw"] == str(2**65)
    assert second["event"]["original_type"] == "collection_event"
    assert second["event"]["reason"] == "nested deeper than 200 levels"


@pytest.mark.asyncio
async def test_a_broken_envelope_or_unserialisable_value_is_replaced_and_the_writer_lives(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    broken = schema.Record("telemetry", "modbus-1", "press", TS, {"readings": [schema.reading("a", 1, ts=TS)]})
    broken.equipment_type = b"\xff".decode("utf-8", "surrogateescape")  # the envelope itself is poison
    worse = schema.event(b"gem\xff".decode("utf-8", "surrogateescape"), "mounter", "unit_processed", TS)

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    boom = schema.telemetry("modbus-1", "press", [schema.reading("a", Boom(), ts=TS)], ts=TS)
    async with running(db) as buf:
        result = await buf.append([broken, boom, worse, rec("modbus-1")])
        assert result.accepted + result.refused == 4
        assert buf.stats().losses["modbus-1"]["unprocessable"] == 2
        assert buf.stats().losses["gem\\udcff"]["unprocessable"] == 1
        assert (await buf.append([rec("modbus-1")])).accepted == 1
    assert payloads(db)[-1]["readings"][0]["value"] == 1.0


def test_escape_raw_is_ascii_and_bounded_for_anything() -> None:
    limit = sys.get_int_max_str_digits()
    for value in (10 ** (limit + 10), nested(5000), "\udcff" * 1000, {b"\xff": [1.0] * 1000}, object()):
        text = schema.escape_raw(value)
        assert text.isascii() and len(text) <= schema.RAW_LIMIT


def test_utc_iso_of_a_negative_fraction_is_a_valid_timestamp() -> None:
    assert schema.utc_iso(-0.5) == "1969-12-31T23:59:59.500Z"
    assert schema.utc_iso(-0.0004) == "1970-01-01T00:00:00.000Z"
    assert schema.utc_iso(1.9996) == "1970-01-01T00:00:02.000Z"
