"""Compact telemetry from the buffer to the outputs: a real buffer file stores telemetry compact against the
equipment's durable meta; `CompactOutput` (with a scripted publisher) publishes each meta retained and
acknowledged before the messages that name it, per connection and across a reload or a restart with
another config; `ExpandingOutput` hands an output that reads the full form exactly what `encode` writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import orjson

from emsedge import contract, schema
from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.publish.compact import CompactOutput, ExpandingOutput
from emsedge.publish.mqtt import PublishResult
from emsedge.telemetry_meta import MetaEncoder, TelemetryMetas, meta_for
from emsedge.topics import Topics

TS = "2026-01-01T00:00:00.000Z"
OK = PublishResult(ok=True)
TOPICS = Topics("ems/p/a/l")


class ScriptedPublisher:
    """Records every publish in order as (topic, payload, retain); `refuse_retained` fails retained ones."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.connected = True
        self.connection_epoch = 1
        self.max_packet_size: int | None = None
        self.refuse_retained = False

    async def wait_connected(self) -> None:
        return

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        self.sent += [(t, p, False) for t, p in items]
        return [OK for _ in items]

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> PublishResult:
        if self.refuse_retained:
            return PublishResult(ok=False, reason="not connected to a broker")
        self.sent.append((topic, payload, retain))
        return OK


def record(equipment: str, unit: str | None = "Cel", quality: str = "good") -> schema.Record:
    readings = [schema.reading("zone1", 21.5, unit=unit, quality=quality, ts=TS),
                schema.reading("count", 7, ts=TS)]
    return schema.telemetry(equipment, "reflow_oven", readings, ts=TS)


def meta(equipment: str, unit: str | None = "Cel") -> schema.TelemetryMeta:
    return schema.TelemetryMeta.build(equipment, "reflow_oven", {"zone1": {"unit": unit}, "count": {"unit": None}})


def stored(metas: TelemetryMetas, *records: schema.Record, seq: int = 1) -> list[tuple[str, bytes]]:
    encode = MetaEncoder(metas)
    return [(TOPICS.for_record(r), encode(r, gateway="gw", seq=seq + i, message_id=f"id-{seq + i}"))
            for i, r in enumerate(records)]


def kinds(sent: list[tuple[str, bytes, bool]]) -> list[tuple[str, str | None, bool]]:
    return [(t.rsplit("/", 2)[1] + "/" + t.rsplit("/", 1)[1], orjson.loads(p)["schema"] if p else None, r)
            for t, p, r in sent]


def test_meta_is_acknowledged_before_the_first_compact_message_and_again_on_a_new_connection(tmp_path: Path) -> None:
    async def main() -> None:
        metas = TelemetryMetas(tmp_path / "metas")
        metas.set(meta("oven-1"))
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, metas, "gw", TOPICS)
        assert await output.publish_batch(stored(metas, record("oven-1"), record("oven-1")), qos=1) == [OK, OK]
        assert await output.publish_batch(stored(metas, record("oven-1"), seq=3), qos=1) == [OK]
        publisher.connection_epoch = 2
        await output.publish_batch(stored(metas, record("oven-1"), seq=4), qos=1)
        compact = "emsedge/telemetry-compact@1"
        assert kinds(publisher.sent) == [
            ("oven-1/meta", "emsedge/meta@1", True), ("oven-1/telemetry", compact, False),
            ("oven-1/telemetry", compact, False), ("oven-1/telemetry", compact, False),
            ("oven-1/meta", "emsedge/meta@1", True), ("oven-1/telemetry", compact, False),
        ]
        retained = orjson.loads(publisher.sent[0][1])
        full = orjson.loads(schema.encode(record("oven-1"), gateway="gw", seq=1, message_id="id-1"))
        assert schema.expand_compact(orjson.loads(publisher.sent[1][1]), retained) == full

    anyio.run(main)


def test_machines_with_the_same_signals_each_get_their_own_meta_on_their_own_topic(tmp_path: Path) -> None:
    async def main() -> None:
        metas = TelemetryMetas(tmp_path / "metas")
        metas.set(meta("oven-1"))
        metas.set(meta("oven-2"))
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, metas, "gw", TOPICS)
        await output.publish_batch(stored(metas, record("oven-1"), record("oven-2")), qos=1)
        published = {t: orjson.loads(p) for t, p, retain in publisher.sent if retain}
        assert {t: m["equipment"] for t, m in published.items()} == {
            TOPICS.meta("oven-1"): "oven-1", TOPICS.meta("oven-2"): "oven-2"}
        assert published[TOPICS.meta("oven-1")]["meta"] != published[TOPICS.meta("oven-2")]["meta"]
        for topic, payload, _ in publisher.sent:
            contract.check_message(topic, payload)

    anyio.run(main)


def test_an_unacknowledged_meta_fails_the_rest_of_the_batch_and_publishes_none_of_it(tmp_path: Path) -> None:
    async def main() -> None:
        metas = TelemetryMetas(tmp_path / "metas")
        metas.set(meta("oven-1"))
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, metas, "gw", TOPICS)
        event = (TOPICS.events("oven-1"), schema.encode(
            schema.event("oven-1", "reflow_oven", schema.EventType.CONNECTION_RESTORED, ts=TS),
            gateway="gw", seq=9, message_id="id-9"))
        publisher.refuse_retained = True
        results = await output.publish_batch([event, *stored(metas, record("oven-1"), record("oven-1"))], qos=1)
        assert [r.ok for r in results] == [True, False, False] and not any(r.permanent for r in results)
        assert "meta of oven-1 not acknowledged" in (results[1].reason or "")
        assert kinds(publisher.sent) == [("oven-1/events", "emsedge/event@2", False)]
        publisher.refuse_retained = False
        assert await output.publish_batch(stored(metas, record("oven-1")), qos=1) == [OK]
        assert kinds(publisher.sent)[1] == ("oven-1/meta", "emsedge/meta@1", True)

    anyio.run(main)


def test_a_backlog_written_under_an_earlier_config_goes_out_with_its_own_meta_even_after_a_restart(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        before = TelemetryMetas(tmp_path / "metas")
        before.set(meta("oven-1", unit="Cel"))
        backlog = stored(before, record("oven-1", unit="Cel"), record("oven-1", unit="Cel"))
        after = TelemetryMetas(tmp_path / "metas")  # a restart: the config now says K
        after.set(meta("oven-1", unit="K"))
        live = stored(after, record("oven-1", unit="K"), seq=3)
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, after, "gw", TOPICS)
        assert await output.publish_batch([*backlog, *live], qos=1) == [OK, OK, OK]
        assert [k[:2] for k in kinds(publisher.sent)] == [
            ("oven-1/meta", "emsedge/meta@1"), ("oven-1/telemetry", "emsedge/telemetry-compact@1"),
            ("oven-1/telemetry", "emsedge/telemetry-compact@1"), ("oven-1/meta", "emsedge/meta@1"),
            ("oven-1/telemetry", "emsedge/telemetry-compact@1")]
        old_meta, new_meta = orjson.loads(publisher.sent[0][1]), orjson.loads(publisher.sent[3][1])
        assert old_meta["signals"]["zone1"] == {"unit": "Cel"} and new_meta["signals"]["zone1"] == {"unit": "K"}
        first = schema.expand_compact(orjson.loads(publisher.sent[1][1]), old_meta)
        assert first["readings"][0]["unit"] == "Cel"
        assert schema.expand_compact(orjson.loads(publisher.sent[4][1]), new_meta)["readings"][0]["unit"] == "K"

    anyio.run(main)


def test_a_message_whose_meta_is_gone_is_refused_permanently_never_sent_without_units(tmp_path: Path) -> None:
    async def main() -> None:
        before = TelemetryMetas(tmp_path / "metas")
        before.set(meta("oven-1"))
        backlog = stored(before, record("oven-1"))
        for f in (tmp_path / "metas").iterdir():
            f.unlink()
        after = TelemetryMetas(tmp_path / "metas")
        after.set(meta("oven-1", unit="K"))
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, after, "gw", TOPICS)
        results = await output.publish_batch([*backlog, *stored(after, record("oven-1", unit="K"), seq=2)], qos=1)
        assert results[0].permanent and "not found" in (results[0].reason or "") and results[1] == OK
        assert [k[0] for k in kinds(publisher.sent)] == ["oven-1/meta", "oven-1/telemetry"]

    anyio.run(main)


def test_a_removed_machine_has_its_meta_cleared_and_its_telemetry_is_stored_full(tmp_path: Path) -> None:
    async def main() -> None:
        metas = TelemetryMetas(tmp_path / "metas")
        metas.set(meta("oven-2"))
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, metas, "gw", TOPICS)
        await output.publish_batch(stored(metas, record("oven-2")), qos=1)
        output.remove("oven-2")
        late = stored(metas, record("oven-2"), seq=2)
        assert orjson.loads(late[0][1])["schema"] == schema.SCHEMA_TELEMETRY
        publisher.sent.clear()
        await output.publish_batch(late, qos=1)
        assert [(t, p == b"", r) for t, p, r in publisher.sent[:1]] == [(TOPICS.meta("oven-2"), True, True)]
        assert publisher.sent[1][1] == late[0][1]

    anyio.run(main)


def test_the_cfx_side_gets_exactly_what_encode_writes(tmp_path: Path) -> None:
    async def main() -> None:
        metas = TelemetryMetas(tmp_path / "metas")
        metas.set(meta("oven-1"))
        inner = ScriptedPublisher()
        output = ExpandingOutput(inner, metas)
        records = [record("oven-1"), record("oven-1", unit="mK", quality="bad")]
        items = stored(metas, *records)
        assert await output.publish_batch(items, qos=1) == [OK, OK]
        for (_, payload, _), (_, compact), r, seq in zip(inner.sent, items, records, (1, 2), strict=True):
            assert orjson.loads(compact)["schema"] == schema.SCHEMA_TELEMETRY_COMPACT
            expected = schema.encode(r, gateway="gw", seq=seq, message_id=f"id-{seq}")
            assert orjson.loads(payload) == orjson.loads(expected)

    anyio.run(main)


def test_the_buffer_stores_compact_telemetry_through_its_encoder(tmp_path: Path) -> None:
    async def main() -> None:
        metas = TelemetryMetas(tmp_path / "metas")
        metas.set(meta("oven-1"))
        buffer = Buffer(BufferConfig(path=tmp_path / "b.db", min_free_bytes=0, linger=0), gateway="gw",
                        topics=TOPICS, encode=MetaEncoder(metas))
        async with anyio.create_task_group() as tg:
            await tg.start(buffer.run)
            await buffer.append([record("oven-1")])
            lease = await buffer.lease("mqtt", 10, 1 << 20)
            assert [orjson.loads(m.payload)["schema"] for m in lease.messages] == [schema.SCHEMA_TELEMETRY_COMPACT]
            await buffer.settle(lease, acked=[m.seq for m in lease.messages], retry=[], dead=[])
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_meta_from_config_names_every_signal_with_its_unit_and_type(tmp_path: Path) -> None:
    from emsedge.adapters.modbus.config import ModbusEquipment  # noqa: PLC0415

    equipment = ModbusEquipment.model_validate({
        "id": "oven-1", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "127.0.0.1"},
        "signals": [{"name": "zone1", "table": "holding", "address": 0, "type": "float32", "unit": "Cel"},
                    {"name": "count", "table": "holding", "address": 2, "type": "uint16"}],
    })
    built = meta_for(equipment)
    assert built.signals == {"zone1": {"unit": "Cel", "type": "float32"}, "count": {"unit": None, "type": "uint16"}}
    metas = TelemetryMetas(tmp_path / "metas")
    metas.set(built)
    assert (tmp_path / "metas" / f"{built.id}.json").exists()
    assert TelemetryMetas(tmp_path / "metas").lookup(built.id) == built
