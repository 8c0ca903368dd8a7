"""Compact telemetry on the MQTT output (`mqtt.telemetry_format: compact`, schema `emsedge/telemetry-compact@1`).

`CompactOutput` stands between the forwarder and the MQTT publisher. The buffer keeps storing the full
form (`emsedge/telemetry@1`, which the CFX output and a replay after a config change read); on the way out
each telemetry message is rewritten against its equipment's meta (`schema.compact_telemetry`) and the
meta goes out retained on `{prefix}/{equipment}/meta`.

Invariants:
* A compact message is published only after the meta it names was acknowledged by the broker on the same
  connection, so a subscriber (live, or joining later through the retained meta) always holds the meta a
  message needs before the message; the meta is re-published on every new connection (a broker without
  persistence forgets retained messages) and when a reload changes the equipment's signals.
* Nothing is lost by compaction: the meta of a message is the config in force when it is published, and a
  reading whose unit differs from it (a backlog written under an earlier config) carries its unit in `x`.
  A message that cannot be written compactly, or whose equipment has no meta (it left the config), is
  published in the full form.
* A machine removed from the config gets an empty retained message on its meta topic (retried until
  acknowledged), as its retained state does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import anyio
import anyio.lowlevel
import structlog

from emsedge.config import EquipmentBase
from emsedge.publish.mqtt import PublishResult
from emsedge.schema import TelemetryMeta, compact_payload
from emsedge.topics import Topics

log = structlog.get_logger("emsedge.publish.compact")

YIELD_EVERY = 0.005
"""Seconds of compaction work after which the event loop gets a turn (a replayed window is large)."""


class _Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def connection_epoch(self) -> int: ...

    @property
    def max_packet_size(self) -> int | None: ...

    async def wait_connected(self) -> None: ...

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]: ...

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> PublishResult: ...


def meta_for(equipment: EquipmentBase) -> TelemetryMeta:
    """The meta of one equipment from its config: each configured signal's unit (and data type, if any)."""
    signals: dict[str, dict[str, str | None]] = {}
    for signal in equipment.configured_signals():
        entry: dict[str, str | None] = {"unit": signal.unit}
        data_type = getattr(signal, "type", None)
        if isinstance(data_type, str):
            entry["type"] = data_type
        signals[signal.name] = entry
    return TelemetryMeta.build(equipment.id, str(equipment.type), signals)


class CompactOutput:
    """The forwarder's output with telemetry written compact (see the module docstring)."""

    def __init__(self, publisher: _Publisher, gateway: str, topics: Topics) -> None:
        self.publisher = publisher
        self.gateway = gateway
        self.topics = topics
        self._metas: dict[str, TelemetryMeta] = {}
        self._payloads: dict[str, bytes] = {}
        self._published: dict[str, str] = {}  # equipment -> meta id acknowledged on this connection
        self._clear: set[str] = set()
        self._epoch = -1
        self._telemetry_prefix = topics.prefix + "/"

    @property
    def connected(self) -> bool:
        return self.publisher.connected

    @property
    def connection_epoch(self) -> int:
        return self.publisher.connection_epoch

    @property
    def max_packet_size(self) -> int | None:
        return self.publisher.max_packet_size

    async def wait_connected(self) -> None:
        await self.publisher.wait_connected()

    def meta(self, equipment: str) -> TelemetryMeta | None:
        return self._metas.get(equipment)

    def set_meta(self, meta: TelemetryMeta) -> None:
        """The equipment's meta from the config (again after a reload; a new id is published before use)."""
        self._clear.discard(meta.equipment)
        self._metas[meta.equipment] = meta
        self._payloads[meta.equipment] = meta.payload(self.gateway)

    def remove(self, equipment: str) -> None:
        """The equipment left the config: its retained meta is cleared, its backlog goes out in the full form."""
        if self._metas.pop(equipment, None) is not None:
            self._payloads.pop(equipment, None)
            self._published.pop(equipment, None)
            self._clear.add(equipment)

    def _equipment_of(self, topic: str) -> str | None:
        if topic.endswith("/telemetry") and topic.startswith(self._telemetry_prefix):
            return topic[len(self._telemetry_prefix): -len("/telemetry")]
        return None

    async def _publish_retained(self, topic: str, payload: bytes) -> PublishResult:
        return await self.publisher.publish(topic, payload, qos=1, retain=True)

    async def _prepare(self, equipment: set[str]) -> PublishResult | None:
        """Clear removed machines' metas and publish the metas the batch needs; the failure, if any."""
        if self.publisher.connection_epoch != self._epoch:
            self._epoch = self.publisher.connection_epoch
            self._published.clear()
        for gone in sorted(self._clear):
            if (await self._publish_retained(self.topics.meta(gone), b"")).ok:
                self._clear.discard(gone)
        for name in sorted(equipment):
            meta = self._metas[name]
            if self._published.get(name) == meta.id:
                continue
            result = await self._publish_retained(self.topics.meta(name), self._payloads[name])
            if not result.ok:
                return PublishResult(ok=False, reason=f"meta of {name} not acknowledged: {result.reason}")
            self._published[name] = meta.id
            log.info("telemetry meta published", equipment=name, meta=meta.id, signals=len(meta.signals))
        return None

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        out: list[tuple[str, bytes]] = []
        needed: set[str] = set()
        started = time.perf_counter()
        for topic, payload in items:
            equipment = self._equipment_of(topic)
            meta = self._metas.get(equipment) if equipment is not None else None
            if meta is None:
                out.append((topic, payload))
                continue
            compact = compact_payload(payload, meta)
            if compact is not payload:
                needed.add(meta.equipment)
            out.append((topic, compact))
            if time.perf_counter() - started > YIELD_EVERY:
                await anyio.lowlevel.checkpoint()
                started = time.perf_counter()
        if needed or self._clear:
            failed = await self._prepare(needed)
            if failed is not None:
                return [failed] * len(items)
        return await self.publisher.publish_batch(out, qos=qos)
