"""The forwarder stage on a real buffer file, with a scripted output (what the broker answers per message)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from emsedge import schema
from emsedge.buffer import Buffer, StoredMessage, export
from emsedge.config import BufferConfig
from emsedge.forward import MAX_PUBLISH_ATTEMPTS, Forwarder
from emsedge.publish.mqtt import PublishResult
from emsedge.topics import Topics

OK = PublishResult(ok=True)
QUOTA = PublishResult(ok=False, permanent=True, reason="broker rejected the message: Quota exceeded", reason_code=0x97)
INVALID = PublishResult(ok=False, permanent=True, reason="payload format invalid", reason_code=0x99)


class ScriptedOutput:
    """Answers each published message with `answer(topic, payload)`; records what it was sent."""

    def __init__(self, answer: Callable[[str, bytes], PublishResult]) -> None:
        self.answer = answer
        self.sent: list[bytes] = []
        self.connected = True
        self.connection_epoch = 1
        self.max_packet_size: int | None = None

    async def wait_connected(self) -> None:
        return

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        self.sent += [p for _, p in items]
        return [self.answer(t, p) for t, p in items]


def rec(value: float) -> schema.Record:
    ts = "2026-01-01T00:00:00.000Z"
    return schema.telemetry("oven-1", "reflow_oven", [schema.reading("zone1", value, ts=ts)], ts=ts)


@asynccontextmanager
async def forwarding(tmp_path: Path, output: ScriptedOutput) -> AsyncIterator[tuple[Buffer, Forwarder]]:
    buf = Buffer(BufferConfig(path=tmp_path / "b.db", min_free_bytes=0, linger=0), gateway="gw", topics=Topics("a/b"))
    delivered: list[StoredMessage] = []
    fwd = Forwarder(buf, output, qos=1, window=100, max_inflight_bytes=1 << 20,
                    on_delivered=lambda messages, _at: delivered.extend(messages))
    async with anyio.create_task_group() as core:  # stopped in the runtime's order: forwarder, then buffer
        await core.start(buf.run)
        async with anyio.create_task_group() as link:
            await link.start(fwd.run)
            try:
                yield buf, fwd
            finally:
                link.cancel_scope.cancel()
        core.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_delivered_records_are_deleted_and_counted(tmp_path: Path) -> None:
    output = ScriptedOutput(lambda _t, _p: OK)
    async with forwarding(tmp_path, output) as (buf, fwd):
        await buf.append([rec(float(i)) for i in range(5)])
        with anyio.fail_after(5):
            while fwd.delivered < 5:  # noqa: ASYNC110 - polling the forwarder's counter
                await anyio.sleep(0.01)
        assert await fwd.drain(2) == 0
    assert [json.loads(p)["seq"] for p in output.sent] == [1, 2, 3, 4, 5]


@pytest.mark.asyncio
async def test_a_permanently_refused_record_becomes_an_announced_dead_letter(tmp_path: Path) -> None:
    output = ScriptedOutput(lambda _t, p: INVALID if json.loads(p)["seq"] == 2 else OK)
    async with forwarding(tmp_path, output) as (buf, _fwd):
        await buf.append([rec(1.0), rec(2.0), rec(3.0)])
        with anyio.fail_after(10):
            while not any(b'"buffer_dropped"' in p for p in output.sent):  # noqa: ASYNC110 - polling
                await anyio.sleep(0.01)
        stats = buf.stats()
    assert stats.dead_letters == 1
    assert stats.losses == {"oven-1": {"dead_letter": 1}}
    assert sum(1 for p in output.sent if json.loads(p)["seq"] == 2) == MAX_PUBLISH_ATTEMPTS
    (note,) = [json.loads(p)["event"] for p in output.sent if b'"buffer_dropped"' in p]
    assert (note["dropped_seqs"], note["reason"], note["dropped_total"]) == ([[2, 2]], "dead_letter", 1)
    assert [r["seq"] for r in export(tmp_path / "b.db", dead_letters=True)] == [2]


@pytest.mark.asyncio
async def test_quota_exceeded_is_retried_with_backoff_and_never_dead_lettered(tmp_path: Path) -> None:
    refusals = {"left": MAX_PUBLISH_ATTEMPTS + 2}

    def answer(_topic: str, _payload: bytes) -> PublishResult:
        if refusals["left"]:
            refusals["left"] -= 1
            return QUOTA
        return OK

    output = ScriptedOutput(answer)
    async with forwarding(tmp_path, output) as (buf, fwd):
        await buf.append([rec(1.0)])
        with anyio.fail_after(15):
            while fwd.delivered < 1:  # noqa: ASYNC110 - polling the forwarder's counter
                await anyio.sleep(0.01)
        stats = buf.stats()
    assert (stats.dead_letters, stats.dropped_total, stats.count) == (0, 0, 0)
    assert len(output.sent) == MAX_PUBLISH_ATTEMPTS + 3
