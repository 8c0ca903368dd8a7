"""Broker-side faults against a misbehaving fake broker: nothing is reported ok without its PUBACK."""

from __future__ import annotations

import time

import pytest
from faults.fake_broker import (
    MAXIMUM_PACKET_SIZE,
    RECEIVE_MAXIMUM,
    FakeBroker,
    Publish,
    make_publisher,
    running,
    wait_until,
)
from structlog.testing import capture_logs

from emsedge.publish.mqtt import PublishResult, _publish_packet_size

pytestmark = pytest.mark.timeout(30)


def items(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [("ems/test/oven/telemetry", b'{"seq":%d}' % i) for i in range(start, start + n)]


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_well_behaved_fake_broker_acknowledges_everything_in_order(protocol: str) -> None:
    async with FakeBroker() as broker, running(make_publisher(broker.url, protocol=protocol)) as pub:
        results = await pub.publish_batch(items(50), qos=1)
    assert results == [PublishResult(ok=True)] * 50
    assert [p.payload for p in broker.data()] == [payload for _, payload in items(50)]
    connect = broker.connects[0]
    assert connect.protocol_level == (5 if protocol == "5" else 4)
    assert (connect.will_topic, connect.will_payload, connect.will_retain, connect.will_qos) == (
        "ems/test/_gateway/status", b'{"state":"offline"}', True, 1
    )
    assert connect.clean, "a fresh session each time: the broker must not replay an old one"


@pytest.mark.asyncio
async def test_a_withheld_puback_is_never_reported_ok_and_the_link_is_recycled_after_publish_timeout() -> None:
    async with FakeBroker(mode="withhold") as broker, running(make_publisher(broker.url, publish_timeout=0.5)) as pub:
        started = time.monotonic()
        results = await pub.publish_batch(items(5), qos=1)
        waited = time.monotonic() - started
        assert all(not r.ok and not r.permanent for r in results)
        assert all("publish_timeout" in (r.reason or "") for r in results)
        assert 0.4 < waited < 3.0
        await wait_until(lambda: pub.connected and pub.connection_epoch == 2)
    assert len(broker.connects) >= 2


@pytest.mark.asyncio
async def test_a_duplicate_puback_settles_only_its_own_message() -> None:
    # The first message is acknowledged twice, the second never: the duplicate must not count for it.
    def policy(publish: Publish) -> str:
        return "double" if publish.payload == b'{"seq":0}' else "withhold"

    async with FakeBroker(policy=policy) as broker, running(make_publisher(broker.url, publish_timeout=0.5)) as pub:
        results = await pub.publish_batch(items(2), qos=1)
    assert results[0].ok
    assert not results[1].ok
    assert len(broker.data()) == 2


@pytest.mark.asyncio
async def test_a_puback_for_an_unknown_packet_id_acknowledges_nothing_and_crashes_nothing() -> None:
    async with FakeBroker(mode="unknown") as broker, running(make_publisher(broker.url, publish_timeout=0.5)) as pub:
        results = await pub.publish_batch(items(3), qos=1)
        assert not any(r.ok for r in results)
        broker.mode = "ack"
        await wait_until(lambda: pub.connected)
        assert (await pub.publish_batch(items(3), qos=1)) == [PublishResult(ok=True)] * 3


@pytest.mark.asyncio
async def test_a_socket_closed_between_publish_and_puback_fails_the_batch_promptly_and_reconnects() -> None:
    def policy(publish: Publish) -> str:
        return "close" if publish.payload == b'{"seq":3}' else "delay"

    async with FakeBroker(policy=policy, delay=0.3) as broker, running(
        make_publisher(broker.url, publish_timeout=10.0)
    ) as pub:
        started = time.monotonic()
        results = await pub.publish_batch(items(6), qos=1)
        assert time.monotonic() - started < 2.0, "a lost link fails the batch at once, not at publish_timeout"
        assert not any(r.ok for r in results), "nothing was acknowledged before the broker closed the socket"
        assert all("connection lost" in (r.reason or "") for r in results)
        broker.policy = None
        await wait_until(lambda: pub.connected and pub.connection_epoch == 2)
        assert all(r.ok for r in await pub.publish_batch(items(2), qos=1))


@pytest.mark.asyncio
async def test_messages_acknowledged_before_the_socket_closed_stay_ok_and_the_rest_fail() -> None:
    def policy(publish: Publish) -> str:
        return "close" if publish.payload == b'{"seq":5}' else "ack"

    async with FakeBroker(policy=policy) as broker, running(make_publisher(broker.url)) as pub:
        results = await pub.publish_batch(items(10), qos=1)
    # PUBACKs 0-4 may or may not have been read before the EOF, but never anything from 5 on.
    oks = [r.ok for r in results]
    assert oks == sorted(oks, reverse=True), "ok results form a prefix: acks arrive in order"
    assert not any(oks[5:])
    assert len(broker.connects) >= 1


@pytest.mark.asyncio
async def test_an_mqtt5_puback_with_not_authorized_is_a_permanent_failure_and_the_link_stays_up() -> None:
    def policy(publish: Publish) -> str:
        return "reason" if publish.payload == b'{"seq":1}' else "ack"

    async with FakeBroker(policy=policy, reason_code=0x87) as broker, running(
        make_publisher(broker.url, protocol="5")
    ) as pub:
        results = await pub.publish_batch(items(3), qos=1)
        assert pub.connected
        assert pub.connection_epoch == 1
    assert [results[0].ok, results[2].ok] == [True, True], "no head-of-line blocking behind a refused message"
    refused = results[1]
    assert (refused.ok, refused.permanent, refused.reason_code) == (False, True, 0x87)
    assert "Not authorized" in (refused.reason or "")
    assert len(broker.connects) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "name"), [(0x97, "Quota exceeded"), (0x91, "Packet identifier in use")])
async def test_an_mqtt5_puback_with_a_temporary_reason_code_is_a_transient_failure_to_retry(
    code: int, name: str
) -> None:
    def policy(publish: Publish) -> str:
        return "reason" if publish.payload == b'{"seq":1}' else "ack"

    async with FakeBroker(policy=policy, reason_code=code) as broker, running(
        make_publisher(broker.url, protocol="5")
    ) as pub:
        results = await pub.publish_batch(items(3), qos=1)
        assert pub.connected
    assert [results[0].ok, results[2].ok] == [True, True]
    deferred = results[1]
    assert (deferred.ok, deferred.permanent, deferred.reason_code) == (False, False, code)
    assert name in (deferred.reason or "")
    assert len(broker.connects) == 1


@pytest.mark.asyncio
async def test_a_message_over_the_brokers_maximum_packet_size_is_refused_permanently_before_sending() -> None:
    async with FakeBroker(connack_properties={MAXIMUM_PACKET_SIZE: 200}) as broker, running(
        make_publisher(broker.url, protocol="5")
    ) as pub:
        batch = [("ems/test/oven/telemetry", b"small"), ("ems/test/oven/telemetry", b"x" * 500),
                 ("ems/test/oven/telemetry", b"small again")]
        results = await pub.publish_batch(batch, qos=1)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].permanent
    assert results[1].reason_code == 0x95
    assert "maximum packet size of 200" in (results[1].reason or "")
    assert [p.payload for p in broker.data()] == [b"small", b"small again"], "the big one never went out"


@pytest.mark.asyncio
async def test_the_brokers_receive_maximum_caps_the_messages_in_flight() -> None:
    async with FakeBroker(mode="delay", delay=0.02, connack_properties={RECEIVE_MAXIMUM: 4}) as broker, running(
        make_publisher(broker.url, protocol="5", max_inflight=100)
    ) as pub:
        results = await pub.publish_batch(items(40), qos=1)
    assert all(r.ok for r in results)
    assert 1 <= broker.max_unacked <= 4


@pytest.mark.asyncio
async def test_max_inflight_caps_the_messages_in_flight() -> None:
    async with FakeBroker(mode="delay", delay=0.02) as broker, running(
        make_publisher(broker.url, max_inflight=8)
    ) as pub:
        results = await pub.publish_batch(items(60), qos=1)
    assert all(r.ok for r in results)
    assert [p.payload for p in broker.data()] == [payload for _, payload in items(60)]
    assert 2 <= broker.max_unacked <= 8


@pytest.mark.asyncio
async def test_a_stalled_link_that_ignores_pings_is_noticed_by_the_keepalive() -> None:
    async with FakeBroker(answer_pings=False) as broker, running(make_publisher(broker.url, keepalive=1)) as pub:
        started = time.monotonic()
        await wait_until(lambda: not pub.connected, limit=6.0)
        assert time.monotonic() - started < 4.5
        assert broker.pings >= 1
        assert "keep alive" in (pub.last_error or "").lower()


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_refused_connack_is_reported_and_retried(protocol: str) -> None:
    with capture_logs() as logs:
        async with FakeBroker(connect_return_code=5) as broker, running(
            make_publisher(broker.url, protocol=protocol), connected=False
        ) as pub:
            await wait_until(lambda: len(broker.connects) >= 3)
            assert not pub.connected
            assert "refused" in (pub.last_error or "")
            assert "authorized" in (pub.last_error or "").lower()
    failures = [entry for entry in logs if entry["event"] == "mqtt connect failed"]
    assert len(failures) == 1, "one line per state change, not one per attempt"
    assert "Not authorized" in failures[0]["error"]


@pytest.mark.asyncio
async def test_publishing_while_disconnected_fails_at_once_without_touching_the_network() -> None:
    async with FakeBroker() as broker:
        pub = make_publisher(broker.url)
        results = await pub.publish_batch(items(3), qos=1)
        assert [r.ok for r in results] == [False] * 3
        assert all(r.reason == "not connected to a broker" for r in results)
        assert not broker.publishes


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_the_packet_size_the_publisher_computes_is_the_size_on_the_wire(protocol: str) -> None:
    sizes = [0, 1, 100, 200, 16_000, 20_000]
    async with FakeBroker() as broker, running(make_publisher(broker.url, protocol=protocol)) as pub:
        for qos in (0, 1):
            for n in sizes:
                assert (await pub.publish("ems/test/größe", b"x" * n, qos=qos)).ok
        await wait_until(lambda: len(broker.data()) == 2 * len(sizes))
    computed = [_publish_packet_size("ems/test/größe", n, qos, protocol == "5") for qos in (0, 1) for n in sizes]
    assert [p.wire_size for p in broker.data()] == computed


@pytest.mark.asyncio
async def test_a_message_of_exactly_the_maximum_packet_size_is_sent() -> None:
    limit = _publish_packet_size("ems/test/t", 300, 1, True)
    async with FakeBroker(connack_properties={MAXIMUM_PACKET_SIZE: limit}) as broker, running(
        make_publisher(broker.url, protocol="5")
    ) as pub:
        results = await pub.publish_batch([("ems/test/t", b"x" * 300), ("ems/test/t", b"x" * 301)], qos=1)
    assert results[0].ok
    assert results[1].permanent
    assert len(broker.data()) == 1
