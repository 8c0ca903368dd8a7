"""After a broker outage long enough to grow the reconnect backoff, the first message follows the broker's
return within seconds: buffer, forwarder and publisher in this process, a real mosquitto killed and started
again on the same port, a real subscriber.

The jitter is pinned at its top (`rng=lambda: 1.0`), so the backoff is exact and the probe checks are at
their slowest (1.5 x `probe_interval`); the broker comes back only once the backoff has grown so far that
waiting it out would miss the target. With `probe_interval: null` (the 0.1 behaviour) this test fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from support import Mosquitto, Subscriber, seq_report

from emsedge import schema
from emsedge.buffer import Buffer
from emsedge.config import BufferConfig, MqttConfig
from emsedge.forward import Forwarder
from emsedge.publish.mqtt import MqttPublisher
from emsedge.topics import Topics

pytestmark = pytest.mark.timeout(90)

PREFIX = "plant-t/smt/line-t"
TARGET = 3.0
"""Seconds from the broker accepting connections to the first data message at the subscriber (issue 17)."""
GROWN = 6.0
"""The broker returns only when the next attempt is at least this far away: without a probe, TARGET fails."""


def record(value: float) -> schema.Record:
    ts = schema.utc_iso()
    return schema.telemetry("oven-1", "reflow_oven", [schema.reading("zone1_temp", value, unit="Cel", ts=ts)], ts=ts)


@pytest.mark.asyncio
async def test_the_first_message_after_a_long_outage_arrives_within_3s_of_the_broker_accepting_again(
    tmp_path: Path,
) -> None:
    mosq = Mosquitto(workdir=tmp_path, persistence=True)  # the subscriber's session survives the kill
    mosq.start()
    sub = Subscriber(mosq.port, topic=f"{PREFIX}/#", client_id="mes-checker", clean=False)
    topics = Topics(PREFIX)
    config = MqttConfig(url=mosq.url, connect_timeout=2.0, backoff={"initial": 0.5, "max": 16.0}, probe_interval=1.0)
    publisher = MqttPublisher(
        config, client_id="line-t-gw", status_topic=topics.status, online_payload=lambda: b'{"state":"online"}',
        offline_payload=b'{"state":"offline"}', rng=lambda: 1.0,
    )
    supervisor = publisher._supervisor  # its attempt schedule is the precondition
    buffer = Buffer(BufferConfig(path=tmp_path / "buffer.db", min_free_bytes=0, linger=0), gateway="gw", topics=topics)
    forwarder = Forwarder(buffer, publisher, qos=1, window=100, max_inflight_bytes=1 << 20)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(buffer.run)
            await tg.start(publisher.run)
            await tg.start(forwarder.run)
            with anyio.fail_after(15):
                await publisher.wait_connected()
            await buffer.append([record(0.0)])
            await anyio.to_thread.run_sync(lambda: sub.wait_for(lambda got: len(got) >= 1, 15, "/telemetry"))
            await anyio.to_thread.run_sync(  # the subscriber's session is on disk before the kill
                lambda: wait_for_file(tmp_path / f"mosquitto-{mosq.port}.db")
            )

            await anyio.to_thread.run_sync(lambda: mosq.stop(kill=True))
            await buffer.append([record(float(i)) for i in range(1, 51)])  # the backlog of the outage
            with anyio.fail_after(40):
                while not grown(supervisor.next_attempt_at):  # noqa: ASYNC110 - the supervisor's plain state
                    await anyio.sleep(0.02)
            failed_attempts = supervisor.attempts - 1

            accepting_from = time.monotonic()  # before the start: the broker's own start-up counts against us
            await anyio.to_thread.run_sync(mosq.start)
            await anyio.to_thread.run_sync(lambda: sub.wait_for(lambda got: len(got) >= 2, 15, "/telemetry"))
            first_after = time.monotonic() - accepting_from
            await anyio.to_thread.run_sync(
                lambda: sub.wait_for(lambda got: len({p["seq"] for p in got}) >= 51, 15, "/telemetry")
            )
            tg.cancel_scope.cancel()
        assert failed_attempts >= 4, "the backoff grew through several refused attempts"
        assert first_after <= TARGET, f"first message {first_after:.2f}s after the broker was back"
        _, _, missing = seq_report(sub.payloads("/telemetry"), first=1, last=51)
        assert missing == []
    finally:
        sub.close()
        mosq.stop()


def grown(next_attempt_at: float | None) -> bool:
    return next_attempt_at is not None and next_attempt_at - anyio.current_time() >= GROWN


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} was not written")
        time.sleep(0.02)
