"""Compact telemetry on the outputs (`mqtt.telemetry_format: compact`, schema `emsedge/telemetry-compact@1`).

The buffer stores telemetry already compact, each message naming the meta it was written against
(`emsedge.telemetry_meta`). Two output wrappers stand between a forwarder and its output:

* `CompactOutput` (MQTT) publishes each meta retained on `{prefix}/{equipment}/meta` before the first
  message that names it.
* `ExpandingOutput` (CFX) hands the output the full form (`schema.expand_payload`), which its mapping reads.

Invariants of `CompactOutput`:
* A compact message is published only after the meta it names was acknowledged by the broker on the same
  connection, so a subscriber (live, or joining later through the retained meta) holds a message's meta
  before the message. Within a batch, messages go out in order; where a machine's meta changes (a backlog
  written under an earlier config, then the current one), the batch is split and the next meta published
  between the two parts. Every meta is published again on a new connection (a broker without persistence
  forgets retained messages).
* A message whose meta cannot be found (its file was deleted) is refused permanently: after the
  forwarder's attempts it is a dead letter, counted and announced. It is never sent without its units.
* A machine removed from the config gets an empty retained message on its meta topic (retried until
  acknowledged), as its retained state does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from emsedge.forward import Output
from emsedge.publish.mqtt import PublishResult
from emsedge.schema import compact_meta_id, expand_payload
from emsedge.telemetry_meta import TelemetryMetas
from emsedge.topics import Topics

log = structlog.get_logger("emsedge.publish.compact")


class _Publisher(Output, Protocol):
    """An output that can also publish one retained message (the meta)."""

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> PublishResult: ...


class _Wrapper:
    def __init__(self, output: Output, metas: TelemetryMetas) -> None:
        self.output = output
        self.metas = metas

    @property
    def connected(self) -> bool:
        return self.output.connected

    @property
    def connection_epoch(self) -> int:
        return self.output.connection_epoch

    @property
    def max_packet_size(self) -> int | None:
        return self.output.max_packet_size

    async def wait_connected(self) -> None:
        await self.output.wait_connected()


class CompactOutput(_Wrapper):
    """The MQTT output with each compact message's meta published first (see the module docstring)."""

    def __init__(self, publisher: _Publisher, metas: TelemetryMetas, gateway: str, topics: Topics) -> None:
        super().__init__(publisher, metas)
        self.publisher = publisher
        self.gateway = gateway
        self.topics = topics
        self._published: dict[str, str] = {}  # equipment -> meta id acknowledged on this connection
        self._clear: set[str] = set()
        self._epoch = -1

    def remove(self, equipment: str) -> None:
        """The equipment left the config: its retained meta is cleared (at the next batch)."""
        self.metas.remove(equipment)
        self._published.pop(equipment, None)
        self._clear.add(equipment)

    def keep(self, equipment: str) -> None:
        """The equipment is (again) in the config: its retained meta is not to be cleared."""
        self._clear.discard(equipment)

    async def _publish_meta(self, equipment: str, meta_id: str) -> PublishResult:
        meta = self.metas.lookup(meta_id)
        if meta is None:
            return PublishResult(ok=False, permanent=True,
                                 reason=f"telemetry meta {meta_id} of {equipment} not found (its file is gone)")
        result = await self.publisher.publish(self.topics.meta(equipment), meta.payload(self.gateway), qos=1,
                                              retain=True)
        if not result.ok:
            return PublishResult(ok=False, reason=f"meta of {equipment} not acknowledged: {result.reason}")
        self._published[equipment] = meta_id
        log.info("telemetry meta published", equipment=equipment, meta=meta_id, signals=len(meta.signals))
        return result

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        if self.publisher.connection_epoch != self._epoch:
            self._epoch = self.publisher.connection_epoch
            self._published.clear()
        for gone in sorted(self._clear):
            if (await self.publisher.publish(self.topics.meta(gone), b"", qos=1, retain=True)).ok:
                self._clear.discard(gone)
        results: list[PublishResult] = []
        pending: list[tuple[str, bytes]] = []
        prefix = self.topics.prefix + "/"
        for index, (topic, payload) in enumerate(items):
            meta_id = compact_meta_id(payload) if topic.endswith("/telemetry") else None
            if meta_id is not None:
                equipment = topic[len(prefix): -len("/telemetry")]
                if self._published.get(equipment) != meta_id:
                    if pending:
                        results += await self.publisher.publish_batch(pending, qos=qos)
                        pending = []
                    outcome = await self._publish_meta(equipment, meta_id)
                    if outcome.permanent:
                        results.append(outcome)  # this message only; the others may have their meta
                        continue
                    if not outcome.ok:
                        return results + [outcome] * (len(items) - index)
            pending.append((topic, payload))
        if pending:
            results += await self.publisher.publish_batch(pending, qos=qos)
        return results


class ExpandingOutput(_Wrapper):
    """An output that reads the full form (CFX): compact telemetry is expanded before it is handed over."""

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        full: list[tuple[str, bytes]] = []
        refused: dict[int, PublishResult] = {}
        for index, (topic, payload) in enumerate(items):
            meta_id = compact_meta_id(payload)
            if meta_id is not None:
                meta = self.metas.lookup(meta_id)
                if meta is None:
                    refused[index] = PublishResult(ok=False, permanent=True,
                                                   reason=f"telemetry meta {meta_id} not found (its file is gone)")
                    continue
                payload = expand_payload(payload, meta)  # noqa: PLW2901 - the item, in the form the output reads
            full.append((topic, payload))
        sent = iter(await self.output.publish_batch(full, qos=qos) if full else [])
        return [refused[i] if i in refused else next(sent) for i in range(len(items))]
