"""`CompactOutput` with a scripted publisher: the meta goes out (retained, acknowledged) before the compact
telemetry that names it, on every connection and after a reload changed it; a machine that left the config
has its meta cleared and its backlog sent in the full form."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import orjson

from emsedge import schema
from emsedge.publish.compact import CompactOutput, meta_for
from emsedge.publish.mqtt import PublishResult
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


def telemetry(equipment: str, seq: int, unit: str | None = "Cel") -> tuple[str, bytes]:
    record = schema.telemetry(equipment, "reflow_oven", [schema.reading("zone1", 21.5, unit=unit, ts=TS)], ts=TS)
    return TOPICS.telemetry(equipment), schema.encode(record, gateway="gw", seq=seq, message_id=f"id-{seq}")


def meta(equipment: str, unit: str | None = "Cel") -> schema.TelemetryMeta:
    return schema.TelemetryMeta.build(equipment, "reflow_oven", {"zone1": {"unit": unit}})


def schemas(sent: list[tuple[str, bytes, bool]]) -> list[tuple[str, str | None, bool]]:
    return [(t.rsplit("/", 1)[1], orjson.loads(p)["schema"] if p else None, r) for t, p, r in sent]


def test_meta_is_acknowledged_before_the_first_compact_message_and_again_on_a_new_connection() -> None:
    async def main() -> None:
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, "gw", TOPICS)
        output.set_meta(meta("oven-1"))
        assert await output.publish_batch([telemetry("oven-1", 1), telemetry("oven-1", 2)], qos=1) == [OK, OK]
        assert await output.publish_batch([telemetry("oven-1", 3)], qos=1) == [OK]
        publisher.connection_epoch = 2
        await output.publish_batch([telemetry("oven-1", 4)], qos=1)
        assert schemas(publisher.sent) == [
            ("meta", "emsedge/meta@1", True), ("telemetry", "emsedge/telemetry-compact@1", False),
            ("telemetry", "emsedge/telemetry-compact@1", False), ("telemetry", "emsedge/telemetry-compact@1", False),
            ("meta", "emsedge/meta@1", True), ("telemetry", "emsedge/telemetry-compact@1", False),
        ]
        retained = orjson.loads(publisher.sent[0][1])
        for _, payload, retain in publisher.sent:
            if not retain:
                message = orjson.loads(payload)
                assert schema.expand_compact(message, retained)["readings"][0]["unit"] == "Cel"

    anyio.run(main)


def test_an_unacknowledged_meta_fails_the_batch_and_publishes_no_data() -> None:
    async def main() -> None:
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, "gw", TOPICS)
        output.set_meta(meta("oven-1"))
        publisher.refuse_retained = True
        results = await output.publish_batch([telemetry("oven-1", 1), telemetry("oven-1", 2)], qos=1)
        assert [r.ok for r in results] == [False, False] and not any(r.permanent for r in results)
        assert "meta of oven-1 not acknowledged" in (results[0].reason or "")
        assert publisher.sent == []
        publisher.refuse_retained = False
        assert await output.publish_batch([telemetry("oven-1", 1)], qos=1) == [OK]
        assert schemas(publisher.sent)[0] == ("meta", "emsedge/meta@1", True)

    anyio.run(main)


def test_a_reload_publishes_the_new_meta_and_a_removed_machine_goes_full_with_its_meta_cleared() -> None:
    async def main() -> None:
        publisher = ScriptedPublisher()
        output = CompactOutput(publisher, "gw", TOPICS)
        output.set_meta(meta("oven-1"))
        output.set_meta(meta("oven-2"))
        await output.publish_batch([telemetry("oven-1", 1), telemetry("oven-2", 2)], qos=1)
        publisher.sent.clear()
        output.set_meta(meta("oven-1", unit="K"))  # the reload changed the unit
        output.remove("oven-2")
        backlog = telemetry("oven-1", 3, unit="Cel")  # written before the reload
        old_oven_2 = telemetry("oven-2", 4)
        event = (TOPICS.events("oven-1"), schema.encode(
            schema.event("oven-1", "reflow_oven", schema.EventType.CONNECTION_RESTORED, ts=TS),
            gateway="gw", seq=5, message_id="id-5"))
        await output.publish_batch([backlog, old_oven_2, event], qos=1)
        assert [(t, p == b"", r) for t, p, r in publisher.sent[:2]] == [
            (TOPICS.meta("oven-2"), True, True), (TOPICS.meta("oven-1"), False, True)]
        new_meta = orjson.loads(publisher.sent[1][1])
        assert new_meta["signals"] == {"zone1": {"unit": "K"}}
        sent_backlog, sent_oven_2, sent_event = (orjson.loads(p) for _, p, _ in publisher.sent[2:])
        assert sent_backlog["x"] == {"zone1": {"unit": "Cel"}}  # the unit it was recorded with, kept
        assert schema.expand_compact(sent_backlog, new_meta) == orjson.loads(backlog[1])
        assert publisher.sent[3][1] == old_oven_2[1] and sent_oven_2["schema"] == schema.SCHEMA_TELEMETRY
        assert publisher.sent[4][1] == event[1] and sent_event["schema"] == schema.SCHEMA_EVENT

    anyio.run(main)


def test_meta_from_config_names_every_signal_with_its_unit_and_type() -> None:
    from emsedge.adapters.modbus.config import ModbusEquipment  # noqa: PLC0415

    equipment = ModbusEquipment.model_validate({
        "id": "oven-1", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "127.0.0.1"},
        "signals": [{"name": "zone1", "table": "holding", "address": 0, "type": "float32", "unit": "Cel"},
                    {"name": "count", "table": "holding", "address": 2, "type": "uint16"}],
    })
    built = meta_for(equipment)
    assert built.signals == {"zone1": {"unit": "Cel", "type": "float32"}, "count": {"unit": None, "type": "uint16"}}
    assert built.id == meta_for(equipment).id != meta("oven-1").id
