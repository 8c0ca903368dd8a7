"""Unit tests of the MQTT publisher: URL handling, secrets kept out of reprs and logs, paho hooks."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import anyio
import pytest
from faults.fake_broker import FakeBroker, make_publisher, running, wait_until
from structlog.testing import capture_logs

from emsedge.config import MqttConfig
from emsedge.errors import ConfigError
from emsedge.publish import MqttPublisher, PublishResult
from emsedge.publish.mqtt import (
    TRANSIENT_REASON_CODES,
    _describe,
    _parse_broker,
    _Secret,
    is_permanent_reason_code,
)

PASSWORD = "pa55-Very-Secret-42"


@pytest.mark.parametrize(
    ("url", "display", "port", "tls"),
    [
        ("mqtt://127.0.0.1", "mqtt://127.0.0.1:1883", 1883, False),
        ("tcp://broker.plant:1884", "tcp://broker.plant:1884", 1884, False),
        ("mqtts://broker.plant", "mqtts://broker.plant:8883", 8883, True),
        ("ssl://[::1]:9883", "ssl://[::1]:9883", 9883, True),
    ],
)
def test_broker_urls_get_default_ports_and_tls_from_the_scheme(url: str, display: str, port: int, tls: bool) -> None:
    broker = _parse_broker(url)
    assert (broker.display, broker.port, broker.tls) == (display, port, tls)


def test_credentials_inside_a_url_are_used_but_never_shown() -> None:
    broker = _parse_broker(f"mqtt://gw:{PASSWORD}@127.0.0.1:1883")
    assert broker.display == "mqtt://127.0.0.1:1883"
    assert broker.username == "gw"
    assert broker.password is not None
    assert broker.password.reveal() == PASSWORD
    assert PASSWORD not in repr(broker)
    assert PASSWORD not in str(broker.password)


def test_a_secret_never_shows_itself() -> None:
    secret = _Secret(PASSWORD)
    assert PASSWORD not in repr(secret)
    assert PASSWORD not in str(secret)
    assert PASSWORD not in f"{secret}"


def test_the_password_is_in_no_repr_or_str_of_the_publisher_or_its_config(tmp_path: Path) -> None:
    secret_file = tmp_path / "mqtt.pw"
    secret_file.write_text(PASSWORD + "\n")
    for config in (
        MqttConfig(url="mqtt://127.0.0.1:1883", username="gw", password=PASSWORD),
        MqttConfig(url="mqtt://127.0.0.1:1883", username="gw", password_file=secret_file),
    ):
        publisher = MqttPublisher(
            config, client_id="gw", status_topic="ems/a/b/c/_gateway/status",
            online_payload=lambda: b"{}", offline_payload=b"{}",
        )
        for text in (repr(publisher), str(publisher), repr(config), str(config), repr(vars(publisher))):
            assert PASSWORD not in text


def test_an_unreadable_password_file_is_a_config_error_without_the_secret(tmp_path: Path) -> None:
    # The config checks that the file exists; it can still vanish before the publisher reads it.
    (tmp_path / "missing").write_text(PASSWORD)
    config = MqttConfig(url="mqtt://127.0.0.1:1883", username="gw", password_file=tmp_path / "missing")
    (tmp_path / "missing").unlink()
    with pytest.raises(ConfigError, match="cannot read secret file"):
        MqttPublisher(config, client_id="gw", status_topic="s", online_payload=lambda: b"", offline_payload=b"")


@pytest.mark.asyncio
async def test_the_password_is_sent_to_the_broker_but_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        async with FakeBroker(mode="close") as broker:
            pub = make_publisher(broker.url, username="line1-gw", password=PASSWORD, publish_timeout=0.3)
            async with running(pub):
                # Drive every log line the publisher has: connected, lost, connect failed, disconnected.
                results = await pub.publish_batch([("ems/test/t", b"{}")], qos=1)
                assert not results[0].ok
                await wait_until(lambda: pub.connected)
                broker.connect_return_code = 4
                broker.drop_connections()
                await wait_until(lambda: not pub.connected and len(broker.connects) >= 3)
                assert pub.last_error is not None
                assert PASSWORD not in pub.last_error
                broker.connect_return_code = 0
                await wait_until(lambda: pub.connected)
    assert broker.connects[0].username == "line1-gw"
    assert broker.connects[0].password == PASSWORD.encode(), "the test is only meaningful if it was sent"
    events = {e["event"] for e in logs}
    assert {"mqtt connected", "mqtt connection lost", "mqtt connect failed", "mqtt disconnected"} <= events
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in caplog.text


def test_connect_error_descriptions_are_short_and_free_of_secrets() -> None:
    assert _describe(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert _describe(TimeoutError()) == "timed out"
    assert _describe(OSError(113, "No route to host")) == "No route to host"


def test_an_exception_from_a_failed_publisher_set_up_does_not_carry_the_password(tmp_path: Path) -> None:
    (tmp_path / "missing.pem").write_text("not a certificate")  # exists (config check) but cannot load
    config = MqttConfig(url="mqtts://127.0.0.1:8883", username="gw", password=PASSWORD,
                        tls={"ca_file": tmp_path / "missing.pem"})
    with pytest.raises(ConfigError) as caught:
        MqttPublisher(config, client_id="gw", status_topic="s", online_payload=lambda: b"", offline_payload=b"")
    text = "".join(traceback.format_exception(caught.value))
    assert "mqtt.tls" in text
    assert PASSWORD not in text


def test_a_password_over_plain_tcp_to_a_remote_broker_is_refused_unless_allowed() -> None:
    with pytest.raises(ValueError, match="clear text"):
        MqttConfig(url="mqtt://broker.plant:1883", username="gw", password=PASSWORD)
    assert MqttConfig(url="mqtt://broker.plant:1883", username="gw", password=PASSWORD, allow_insecure=True)


@pytest.mark.asyncio
async def test_a_qos0_message_counts_as_done_once_written() -> None:
    async with FakeBroker(mode="withhold") as broker, running(make_publisher(broker.url)) as pub:
        results = await pub.publish_batch([("ems/test/t", b"a"), ("ems/test/t", b"b")], qos=0)
        assert results == [PublishResult(ok=True)] * 2
        await wait_until(lambda: len(broker.data()) == 2)
    assert [p.qos for p in broker.data()] == [0, 0]


@pytest.mark.asyncio
async def test_an_invalid_topic_is_a_permanent_failure_and_does_not_block_the_rest() -> None:
    async with FakeBroker() as broker, running(make_publisher(broker.url)) as pub:
        results = await pub.publish_batch([("ems/test/#", b"a"), ("ems/test/ok", b"b")], qos=1)
    assert results[0].permanent
    assert results[1].ok
    assert [p.topic for p in broker.data()] == ["ems/test/ok"]


@pytest.mark.asyncio
async def test_cancelling_run_sends_offline_and_disconnect_within_the_close_deadline() -> None:
    async with FakeBroker() as broker:
        pub = make_publisher(broker.url)
        async with running(pub):
            pass
        with anyio.fail_after(1):
            await wait_until(lambda: broker.disconnects == 1)
        assert [p.payload for p in broker.publishes if p.topic.endswith("/status")] == [
            b'{"state":"online"}', b'{"state":"offline"}'
        ]
        assert all(p.retain for p in broker.publishes)
        assert not pub.connected


@pytest.mark.parametrize("code", [0x88, 0x89, 0x8B, 0x8D, 0x8E, 0x91, 0x93, 0x96, 0x97, 0x9C, 0x9D, 0x9F])
def test_mqtt5_reason_codes_the_specification_marks_temporary_are_transient(code: int) -> None:
    assert not is_permanent_reason_code(code)
    assert code in TRANSIENT_REASON_CODES


@pytest.mark.parametrize("code", [0x80, 0x83, 0x87, 0x90, 0x95, 0x99, 0x9A, 0x9B, 0xA2, 0xFE])
def test_mqtt5_reason_codes_that_refuse_the_message_itself_are_permanent(code: int) -> None:
    assert is_permanent_reason_code(code)


@pytest.mark.parametrize("code", [0x00, 0x10])
def test_mqtt5_success_codes_are_not_failures(code: int) -> None:
    assert not is_permanent_reason_code(code)
