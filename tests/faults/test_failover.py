"""Broker failover over a list of URLs, between two real mosquitto brokers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from faults.fake_broker import make_publisher, running, wait_until
from structlog.testing import capture_logs
from support import Mosquitto, Subscriber

pytestmark = pytest.mark.timeout(60)

DATA_TOPIC = "ems/test/oven/telemetry"


def items(seqs: range) -> list[tuple[str, bytes]]:
    return [(DATA_TOPIC, json.dumps({"seq": s}).encode()) for s in seqs]


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """Two brokers on their own ports; the first is NOT started (tests start it when they need it)."""
    first, second = Mosquitto(workdir=tmp_path), Mosquitto(workdir=tmp_path)
    second.start()
    yield first, second
    first.stop()
    second.stop()


@pytest.mark.asyncio
async def test_an_unreachable_first_broker_fails_over_to_the_second(brokers: tuple[Mosquitto, Mosquitto]) -> None:
    first, second = brokers
    sub = Subscriber(second.port, topic=DATA_TOPIC)
    try:
        with capture_logs() as logs:
            async with running(make_publisher([first.url, second.url])) as pub:
                assert pub.current_url == second.url
                assert all(r.ok for r in await pub.publish_batch(items(range(100)), qos=1))
        await anyio.to_thread.run_sync(lambda: sub.wait_for(lambda p: len(p) == 100, timeout=15))
    finally:
        sub.close()
    failovers = [e for e in logs if e["event"] == "mqtt failing over"]
    assert [(e["broker"], e["next_broker"]) for e in failovers] == [(first.url, second.url)]
    failures = [e for e in logs if e["event"] == "mqtt connect failed"]
    assert [(e["broker"], e["error"]) for e in failures] == [(first.url, "connection refused")]


@pytest.mark.asyncio
async def test_losing_the_broker_in_use_moves_to_the_other_one_and_publishing_continues_there(
    brokers: tuple[Mosquitto, Mosquitto],
) -> None:
    first, second = brokers
    async with running(make_publisher([first.url, second.url])) as pub:
        assert pub.current_url == second.url
        assert all(r.ok for r in await pub.publish_batch(items(range(50)), qos=1))
        await anyio.to_thread.run_sync(first.start)
        on_first = Subscriber(first.port, topic=DATA_TOPIC)
        try:
            # Documented behaviour: no fail-back while the current broker works (no flapping).
            await anyio.sleep(0.5)
            assert pub.current_url == second.url
            assert pub.connection_epoch == 1
            assert pub.failovers == 0
            await anyio.to_thread.run_sync(second.stop)
            await wait_until(lambda: pub.connected and pub.current_url == first.url, limit=10)
            assert pub.connection_epoch == 2
            assert pub.failovers == 1
            assert all(r.ok for r in await pub.publish_batch(items(range(50, 100)), qos=1))
            got = await anyio.to_thread.run_sync(lambda: on_first.wait_for(lambda p: len(p) == 50, timeout=15))
            assert [p["seq"] for p in got] == list(range(50, 100))
        finally:
            on_first.close()


@pytest.mark.asyncio
async def test_with_every_broker_down_the_publisher_keeps_trying_and_connects_to_the_first_that_returns(
    brokers: tuple[Mosquitto, Mosquitto],
) -> None:
    first, second = brokers
    await anyio.to_thread.run_sync(second.stop)
    with capture_logs() as logs:
        async with running(make_publisher([first.url, second.url]), connected=False) as pub:
            await anyio.sleep(1.0)
            assert not pub.connected
            await anyio.to_thread.run_sync(second.start)
            with anyio.fail_after(15):
                await pub.wait_connected()
            assert pub.current_url == second.url
    # Many attempts, but one line per broker and per direction: logging follows state changes only.
    failures = [e for e in logs if e["event"] == "mqtt connect failed"]
    assert sorted(e["broker"] for e in failures) == sorted([first.url, second.url])
    assert len([e for e in logs if e["event"] == "mqtt failing over"]) == 2


@pytest.mark.asyncio
async def test_a_round_tries_every_broker_without_waiting_the_backoff_between_them(
    brokers: tuple[Mosquitto, Mosquitto],
) -> None:
    first, second = brokers  # the first is down
    # A 40 s backoff (20-40 s with jitter) between brokers would miss `running`'s 15 s deadline: the
    # backoff lies between rounds.
    async with running(make_publisher([first.url, second.url], backoff={"initial": 40.0, "max": 40.0})) as pub:
        assert pub.current_url == second.url
        assert pub.failovers == 0  # the first connection is not a failover


@pytest.mark.asyncio
async def test_a_lost_connection_starts_the_next_round_at_the_next_broker_even_when_the_first_still_works(
    brokers: tuple[Mosquitto, Mosquitto],
) -> None:
    first, second = brokers
    await anyio.to_thread.run_sync(first.start)
    async with running(make_publisher([first.url, second.url])) as pub:
        assert pub.current_url == first.url
        link = pub._link
        assert link is not None
        link.abort("test: connection dropped")  # the broker itself keeps working
        await wait_until(lambda: pub.connected and pub.connection_epoch == 2, limit=10)
        assert pub.current_url == second.url
        assert pub.failovers == 1
