"""The MQTT publisher against a real mosquitto: PUBACK-driven results, outages, status and will, ACLs."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import anyio
import pytest
from faults.fake_broker import STATUS_TOPIC, make_publisher, running, wait_until
from support import Mosquitto, Subscriber, free_port

pytestmark = pytest.mark.timeout(60)

PROTOCOLS = ["3.1.1", "5"]
DATA_TOPIC = "ems/test/oven/telemetry"


def items(seqs: range | list[int]) -> list[tuple[str, bytes]]:
    return [(DATA_TOPIC, json.dumps({"seq": s, "pad": "x" * 200}).encode()) for s in seqs]


def data_seqs(sub: Subscriber) -> list[int]:
    return [p["seq"] for p in sub.payloads("/telemetry")]


def statuses(sub: Subscriber) -> list[tuple[str, bool]]:
    with sub.lock:
        return [(json.loads(p)["state"], retain) for t, p, retain in sub.messages if t == STATUS_TOPIC]


def retained_status(port: int) -> str:
    """What a subscriber arriving now gets as the retained status."""
    late = Subscriber(port, topic=STATUS_TOPIC)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = statuses(late)
            if got:
                assert got[0][1], "the status must be retained"
                return got[0][0]
            time.sleep(0.02)
        raise AssertionError("no retained status")
    finally:
        close_quickly(late)


def close_quickly(sub: Subscriber) -> None:
    """DISCONNECT first, so paho's network thread ends at once instead of after its select timeout."""
    sub.client.disconnect()
    sub.client.loop_stop()


def broker(tmp_path: Path, *, persistence: bool = False, extra: str = "") -> Mosquitto:
    b = Mosquitto(workdir=tmp_path, persistence=persistence, extra_config=extra)
    b.start()
    return b


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_publish_batch_delivers_in_order_after_the_online_status(
    mosquitto: Mosquitto, subscriber: Subscriber, protocol: str
) -> None:
    async with running(make_publisher(mosquitto.url, protocol=protocol)) as pub:
        results = await pub.publish_batch(items(range(2000)), qos=1)
        assert all(r.ok for r in results)
        assert len(results) == 2000
        assert pub.current_url == mosquitto.url
    await anyio.to_thread.run_sync(lambda: subscriber.wait_for(lambda p: len(p) >= 2000, suffix="/telemetry"))
    assert data_seqs(subscriber) == list(range(2000))
    with subscriber.lock:
        topics = [t for t, _, _ in subscriber.messages]
    assert topics[0] == STATUS_TOPIC, "the online status precedes data on every connection"


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_retained_message_is_on_the_broker_when_publish_returns(mosquitto: Mosquitto, protocol: str) -> None:
    async with running(make_publisher(mosquitto.url, protocol=protocol)) as pub:
        result = await pub.publish("ems/test/marker", b'{"state":"here"}', qos=1, retain=True)
        assert result.ok
        late = await anyio.to_thread.run_sync(lambda: Subscriber(mosquitto.port, topic="ems/test/marker"))
        try:
            await anyio.to_thread.run_sync(lambda: late.wait_for(lambda p: len(p) == 1, timeout=15))
        finally:
            close_quickly(late)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_online_status_is_retained_while_connected_and_a_clean_stop_leaves_offline_retained(
    mosquitto: Mosquitto, protocol: str
) -> None:
    async with running(make_publisher(mosquitto.url, protocol=protocol)):
        assert await anyio.to_thread.run_sync(retained_status, mosquitto.port) == "online"
    assert await anyio.to_thread.run_sync(retained_status, mosquitto.port) == "offline"


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_killed_connection_makes_the_broker_publish_the_offline_will_then_online_returns(
    mosquitto: Mosquitto, subscriber: Subscriber, protocol: str
) -> None:
    async with running(make_publisher(mosquitto.url, protocol=protocol, keepalive=5)) as pub:
        link = pub._link
        assert link is not None
        sock = link.client.socket()
        assert sock is not None
        # The process "dies": its TCP connection ends without DISCONNECT, so the broker sends the will.
        sock.shutdown(socket.SHUT_RDWR)
        await wait_until(lambda: pub.connected and pub.connection_epoch == 2)
        expected = ["online", "offline", "online"]
        await anyio.to_thread.run_sync(
            lambda: subscriber.wait_for(lambda _: [s for s, _ in statuses(subscriber)] == expected)
        )
        assert all(r.ok for r in await pub.publish_batch(items(range(3)), qos=1))


@pytest.mark.asyncio
async def test_the_publisher_starts_without_a_broker_and_connects_when_one_appears(tmp_path: Path) -> None:
    port = free_port()
    pub = make_publisher(f"mqtt://127.0.0.1:{port}")
    async with running(pub, connected=False):
        await wait_until(lambda: pub.last_error is not None, limit=10)
        assert not pub.connected
        assert "connection refused" in (pub.last_error or "")
        assert (await pub.publish_batch(items(range(2)), qos=1))[0].reason == "not connected to a broker"
        late = Mosquitto(workdir=tmp_path, port=port)
        await anyio.to_thread.run_sync(late.start)
        try:
            with anyio.fail_after(15):
                await pub.wait_connected()
            assert pub.connection_epoch == 1
            assert pub.last_error is None
        finally:
            await anyio.to_thread.run_sync(late.stop)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_broker_outage_while_publishing_fails_unacknowledged_messages_and_loses_nothing(
    tmp_path: Path, protocol: str
) -> None:
    """The caller retries what came back not ok (as the buffer does); the checker must see every seq."""
    mosq = broker(tmp_path, persistence=True)
    checker = Subscriber(mosq.port, topic=DATA_TOPIC, client_id=f"checker-{protocol}", clean=False)
    acked: set[int] = set()
    failures = 0
    produced = 0
    outage_over = anyio.Event()

    def more(n: int) -> list[int]:
        nonlocal produced
        batch = list(range(produced, produced + n))
        produced += n
        return batch

    try:
        pub = make_publisher(mosq.url, protocol=protocol)
        async with running(pub), anyio.create_task_group() as tg:

            async def outage() -> None:
                # Stop the broker while batches are in flight, start it again half a second later.
                await wait_until(lambda: len(checker.messages) >= 500, limit=20)
                await anyio.to_thread.run_sync(mosq.stop)
                await anyio.sleep(0.5)
                await anyio.to_thread.run_sync(mosq.start)
                outage_over.set()

            tg.start_soon(outage)
            todo = more(50_000)  # large enough to be in flight when the broker stops, even on a fast machine
            with anyio.fail_after(100):  # a deadline for a loaded machine (pytest-timeout is 120 s)
                # Keep publishing until the outage is over, however fast this machine is.
                while todo or not outage_over.is_set() or not pub.connected:
                    if not todo:
                        todo = more(5000)
                    await pub.wait_connected()
                    results = await pub.publish_batch(items(todo), qos=1)
                    assert len(results) == len(todo)
                    oks = [r.ok for r in results]
                    assert oks == sorted(oks, reverse=True), "acks arrive in order: ok results are a prefix"
                    acked.update(s for s, ok in zip(todo, oks, strict=True) if ok)
                    todo = [s for s, ok in zip(todo, oks, strict=True) if not ok]
                    failures += len(todo)
            assert pub.connection_epoch >= 2
        total = produced
        assert failures > 0, "the outage hit messages in flight"
        await anyio.to_thread.run_sync(
            lambda: checker.wait_for(lambda p: {x["seq"] for x in p} >= set(range(total)), timeout=20)
        )
        assert acked == set(range(total))
    finally:
        checker.close()
        mosq.stop()


ACL = """\
# The gateway line1-gw may publish only under its own prefix (see docs/broker-acl.md).
user line1-gw
topic write ems/test/#
"""


@pytest.mark.asyncio
async def test_an_acl_refusal_is_a_permanent_failure_with_mqtt5(tmp_path: Path) -> None:
    (tmp_path / "acl").write_text(ACL)
    mosq = broker(tmp_path, extra=f"acl_file {tmp_path / 'acl'}")
    try:
        pub = make_publisher(mosq.url, protocol="5", username="line1-gw")
        async with running(pub):
            allowed = await pub.publish(DATA_TOPIC, b"{}", qos=1)
            refused = await pub.publish("ems/other-line/oven/telemetry", b"{}", qos=1)
            assert allowed.ok
            assert not refused.ok
            assert refused.permanent
            assert refused.reason_code == 0x87
            # mosquitto 2.0 also drops the connection after a denied publish; the publisher comes back.
            await wait_until(lambda: pub.connected and pub.connection_epoch == 2)
            assert (await pub.publish(DATA_TOPIC, b"{}", qos=1)).ok
    finally:
        mosq.stop()



@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_qos2_messages_resolve_on_pubcomp_and_arrive_once_in_order(
    mosquitto: Mosquitto, subscriber: Subscriber, protocol: str
) -> None:
    async with running(make_publisher(mosquitto.url, protocol=protocol)) as pub:
        results = await pub.publish_batch(items(range(300)), qos=2)
    assert all(r.ok for r in results)
    await anyio.to_thread.run_sync(lambda: subscriber.wait_for(lambda p: len(p) >= 300, suffix="/telemetry"))
    assert data_seqs(subscriber) == list(range(300))
