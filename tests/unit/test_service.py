"""sd_notify against a fake notify socket, the watchdog task, and /healthz and /metrics served by serve_http."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emsedge.adapters.base import EquipmentHealth, EquipmentState
from emsedge.buffer import BufferStats
from emsedge.publish.cfx_listen import ListenCounters
from emsedge.publish.cfx_requests import RequestCounters
from emsedge.service import GatewayState, SystemdNotifier, metrics_text, parse_listen, run_watchdog, serve_http


def FakeStats(**fields: Any) -> BufferStats:
    """A real (immutable) buffer snapshot with the given fields; 2 records dropped by default."""
    values: dict[str, Any] = {
        "count": 0, "bytes": 0, "oldest_created": None, "next_seq": 1, "evicted_total": 0,
        "evicted_by_equipment": {}, "dead_letters": 0, "leased": 0, "backlog": 0, "writable": True,
        "last_error": None, "dropped_total": 2, "dropped_by_equipment": {"reflow-1": 2},
        "losses": {"reflow-1": {"max_bytes": 2}},
    }
    values.update(fields)
    return BufferStats(**values)


def make_state(stats: BufferStats | None = None, broker: bool = True) -> GatewayState:
    stats = stats or FakeStats()
    up = EquipmentHealth(state=EquipmentState.CONNECTED, polls=10, values=40, last_good_read="2026-01-01T00:00:00.000Z")
    up.good_read(4, 0.003)
    up.good_read(4, 0.2)
    down = EquipmentHealth(
        state=EquipmentState.RETRYING, polls=3, poll_errors=2, last_error="connection refused", reconnects=1,
        losses={"opcua_queue_overflow": 7},
    )
    return GatewayState(
        gateway_id="gw-1", version="0.1.0", started_at="2026-01-01T00:00:00.000Z",
        equipment={"reflow-1": up, "aoi-1": down},
        equipment_info={"reflow-1": ("reflow_oven", "modbus"), "aoi-1": ("aoi", "opcua")},
        buffer_stats=lambda: stats, broker_connected=lambda: broker, broker_url=lambda: "mqtt://127.0.0.1:1883",
        messages_buffered=100, messages_published=90, broker_failovers=lambda: 2,
    )


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def messages(self, timeout: float = 0.2) -> list[str]:
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return out


    def close(self) -> None:
        self.sock.close()


BindNotify = Callable[[str | bytes], NotifySocket]


@pytest.fixture
def notify_path(tmp_path: Path) -> str:
    return str(tmp_path / "notify.sock")


@pytest.fixture
def bind_notify() -> Iterator[BindNotify]:
    sockets: list[NotifySocket] = []

    def bind(address: str | bytes) -> NotifySocket:
        sockets.append(NotifySocket(address))
        return sockets[-1]

    yield bind
    for sock in sockets:
        sock.close()


def test_notifier_sends_ready_status_watchdog_stopping_and_reloading_as_datagrams(
    notify_path: str, bind_notify: BindNotify
) -> None:
    fake = bind_notify(notify_path)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_path})
    notifier.ready()
    notifier.status("5 equipment, 4 connected, backlog 0")
    notifier.status("5 equipment, 4 connected, backlog 0")  # unchanged: not sent again
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    got = fake.messages()
    assert got[0] == f"READY=1\nMAINPID={os.getpid()}"
    assert got[1] == "STATUS=5 equipment, 4 connected, backlog 0"
    assert got[2] == "WATCHDOG=1"
    assert got[3].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(got[3].split("=")[-1]) > 0
    assert got[4].startswith("STOPPING=1")
    assert len(got) == 5


def test_notifier_reaches_an_abstract_namespace_socket(bind_notify: BindNotify) -> None:
    name = f"emsedge-test-{uuid.uuid4().hex}"
    fake = bind_notify("\0" + name)
    SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).ready()
    assert fake.messages()[0].startswith("READY=1")


def test_notifier_without_notify_socket_is_a_silent_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval() is None


def test_notifier_survives_a_missing_socket_and_reports_failure(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.notify("READY=1") is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    env: dict[str, str], expected: float | None
) -> None:
    assert SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_interval() == expected


@pytest.mark.asyncio
async def test_watchdog_task_pings_repeatedly_and_reports_status(notify_path: str, bind_notify: BindNotify) -> None:
    fake = bind_notify(notify_path)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    got: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(run_watchdog, notifier, make_state())
        with anyio.fail_after(5):
            while got.count("WATCHDOG=1") < 4:
                await anyio.sleep(0.05)
                got += fake.messages(timeout=0.001)
        tg.cancel_scope.cancel()
    got += fake.messages()
    assert got.count("WATCHDOG=1") >= 4
    assert "STATUS=2 equipment, 1 connected, backlog 0" in got


@pytest.mark.asyncio
async def test_a_blocked_event_loop_stops_the_watchdog_pings(notify_path: str, bind_notify: BindNotify) -> None:
    import time  # noqa: PLC0415

    fake = bind_notify(notify_path)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "100000"})
    async with anyio.create_task_group() as tg:
        await tg.start(run_watchdog, notifier, make_state())
        await anyio.sleep(0.01)
        fake.messages(timeout=0.01)
        time.sleep(0.3)  # noqa: ASYNC251 - this is the hung loop under test
        during = fake.messages(timeout=0.01)
        tg.cancel_scope.cancel()
    assert during.count("WATCHDOG=1") <= 1


def test_status_line_counts_connected_equipment_backlog_and_broker() -> None:
    assert make_state(FakeStats(count=7)).status_line() == "2 equipment, 1 connected, backlog 7"
    assert make_state(broker=False).status_line().endswith(", broker disconnected")
    state = make_state()
    state.equipment["aoi-1"].state = EquipmentState.FAILED
    assert state.status_line() == "2 equipment, 1 connected, backlog 0, 1 failed"
    assert state.health()[1]["status"] == "degraded"  # refused for good is not ok
    state.equipment["aoi-1"].state = EquipmentState.DISABLED
    assert state.status_line() == "2 equipment, 1 connected, backlog 0, 1 disabled"
    assert state.health()[1]["status"] == "ok"  # switched off in the config


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:80", ("::1", 80)), (":9108", ("0.0.0.0", 9108))],
)
def test_listen_addresses_are_parsed(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


def test_a_listen_address_without_port_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen("localhost")


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    with anyio.fail_after(5):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            raw = b""
            try:
                while True:
                    raw += await stream.receive()
            except anyio.EndOfStream:
                pass
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def serve_and(state: GatewayState, requests: list[tuple[str, str]]) -> list[tuple[int, dict[str, str], bytes]]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_http, "127.0.0.1:0", state)
        out = [await http_get(port, path, method) for method, path in requests]
        tg.cancel_scope.cancel()
    return out


@pytest.mark.asyncio
async def test_healthz_reports_equipment_broker_backlog_and_dropped() -> None:
    stats = FakeStats(count=12, oldest_created=1.0, dead_letters=1)
    [(code, headers, body)] = await serve_and(make_state(stats), [("GET", "/healthz")])
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    health: dict[str, Any] = json.loads(body)
    assert health["status"] == "degraded"  # aoi-1 is down
    assert health["broker"] == {"connected": True, "url": "mqtt://127.0.0.1:1883", "failovers": 2}
    assert health["buffer"]["backlog"] == 12
    assert health["buffer"]["oldest_age_s"] > 0
    assert health["messages"] == {"buffered": 100, "published": 90, "dropped": 2}
    assert health["equipment"]["reflow-1"]["connected"] is True
    assert health["equipment"]["reflow-1"]["last_good_read"] is not None
    assert health["equipment"]["aoi-1"] == {
        "type": "aoi", "adapter": "opcua", "state": "retrying", "connected": False, "disabled": False,
        "last_good_read": None,
        "last_error": "connection refused", "polls": 3, "poll_errors": 2, "reconnects": 1,
    }


@pytest.mark.asyncio
async def test_healthz_is_ok_when_everything_is_up_and_503_when_the_buffer_cannot_write() -> None:
    state = make_state()
    state.equipment["aoi-1"].state = EquipmentState.CONNECTED
    [(code, _, body)] = await serve_and(state, [("GET", "/healthz")])
    assert (code, json.loads(body)["status"]) == (200, "ok")
    [(code, _, body)] = await serve_and(make_state(FakeStats(writable=False)), [("GET", "/healthz")])
    assert (code, json.loads(body)["status"]) == (503, "failing")


@pytest.mark.asyncio
async def test_metrics_are_prometheus_text_with_emsedge_names_read_at_scrape_time() -> None:
    state = make_state(FakeStats(count=5, dead_letters=3, duplicates_suppressed=4))
    state.observe_publish_latency(0.02)
    state.observe_publish_latency(7.0)
    [(code, headers, body)] = await serve_and(state, [("GET", "/metrics")])
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    reflow = (("equipment", "reflow-1"),)
    aoi = (("equipment", "aoi-1"),)
    assert samples[("emsedge_equipment_info", (("adapter", "opcua"), ("equipment", "aoi-1"), ("type", "aoi")))] == 1
    assert samples[("emsedge_polls_total", reflow)] == 10
    assert samples[("emsedge_poll_errors_total", aoi)] == 2
    assert samples[("emsedge_values_collected_total", reflow)] == 48
    assert samples[("emsedge_reconnects_total", aoi)] == 1
    assert samples[("emsedge_equipment_connected", reflow)] == 1
    assert samples[("emsedge_equipment_connected", aoi)] == 0
    assert samples[("emsedge_equipment_state", (("equipment", "aoi-1"), ("state", "retrying")))] == 1
    assert samples[("emsedge_equipment_state", (("equipment", "aoi-1"), ("state", "connected")))] == 0
    assert samples[("emsedge_equipment_state", (("equipment", "reflow-1"), ("state", "connected")))] == 1
    assert sum(v for (name, labels), v in samples.items() if name == "emsedge_equipment_state") == 2
    assert samples[("emsedge_equipment_lost_values_total",
                    (("equipment", "aoi-1"), ("reason", "opcua_queue_overflow")))] == 7
    assert samples[("emsedge_poll_duration_seconds_bucket", tuple(sorted([*reflow, ("le", "0.005")])))] == 1
    assert samples[("emsedge_poll_duration_seconds_bucket", tuple(sorted([*reflow, ("le", "0.25")])))] == 2
    assert samples[("emsedge_poll_duration_seconds_count", reflow)] == 2
    assert samples[("emsedge_messages_buffered_total", ())] == 100
    assert samples[("emsedge_messages_published_total", ())] == 90
    assert samples[("emsedge_messages_dropped_total", ())] == 2  # read from the buffer's durable counters
    assert samples[("emsedge_records_lost_total", (("equipment", "reflow-1"), ("reason", "max_bytes")))] == 2
    assert samples[("emsedge_backlog_messages", ())] == 5
    assert samples[("emsedge_backlog_oldest_age_seconds", ())] == 0
    assert samples[("emsedge_dead_letters", ())] == 3
    assert samples[("emsedge_buffer_duplicates_suppressed_total", ())] == 4
    assert samples[("emsedge_broker_connected", ())] == 1
    assert samples[("emsedge_mqtt_failovers_total", ())] == 2
    assert samples[("emsedge_mqtt_broker", (("broker", "mqtt://127.0.0.1:1883"),))] == 1
    assert samples[("emsedge_publish_latency_seconds_bucket", (("le", "0.05"),))] == 1
    assert samples[("emsedge_publish_latency_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("emsedge_publish_latency_seconds_sum", ())] == pytest.approx(7.02)

    state.equipment["aoi-1"].state = EquipmentState.CONNECTED  # live: the next scrape sees it, no copying
    [(_, _, body)] = await serve_and(state, [("GET", "/metrics")])
    assert 'emsedge_equipment_connected{equipment="aoi-1"} 1.0' in body.decode()


def metric_samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def cfx_snapshot(requests: bool = True, listen: bool = True) -> dict[str, Any]:
    """What `CfxPublisher.snapshot` returns, with the request listeners' snapshots under requests/listen."""
    snapshot: dict[str, Any] = {
        "connected": True, "broker": "amqp://127.0.0.1:5672", "address": "/exchange/cfx", "last_error": None,
        "counters": {"sent": 0, "accepted": 0, "rejected": 0, "released": 0, "heartbeats": 0, "connects": 1},
    }
    if requests:
        counters = RequestCounters(received=9, answered=5, not_supported=2, not_answered=1, rejected=2, reply_failed=1)
        snapshot["requests"] = {"connected": True, "state": "connected", "last_error": None,
                                "counters": asdict(counters)}
    if listen:
        direct = ListenCounters(received=4, answered=3, not_supported=1, rejected=1, connections=6, refused_links=2)
        snapshot["listen"] = {"listening": False, "address": "127.0.0.1:5673", "request_uri": "amqp://127.0.0.1:5673",
                              "state": "retrying", "last_error": "in use", "open_connections": 2,
                              "counters": asdict(direct)}
    return snapshot


def test_metrics_show_the_cfx_request_listeners_by_transport_and_outcome() -> None:
    state = make_state()
    snapshot = cfx_snapshot()
    state.cfx = lambda: snapshot
    samples = metric_samples(metrics_text(state))
    broker, direct = (("transport", "broker"),), (("transport", "direct"),)

    def outcome(transport: str, name: str) -> float:
        return samples[("emsedge_cfx_requests_total", (("outcome", name), ("transport", transport)))]

    assert samples[("emsedge_cfx_request_listener_up", broker)] == 1
    assert samples[("emsedge_cfx_request_listener_up", direct)] == 0
    assert samples[("emsedge_cfx_requests_received_total", broker)] == 9
    assert samples[("emsedge_cfx_requests_received_total", direct)] == 4
    assert [outcome("broker", o) for o in ("answered", "not_answered", "rejected", "reply_failed")] == [5, 1, 2, 1]
    assert [outcome("direct", o) for o in ("answered", "not_answered", "rejected", "reply_failed")] == [3, 0, 1, 0]
    assert samples[("emsedge_cfx_requests_not_supported_total", broker)] == 2
    assert samples[("emsedge_cfx_requests_not_supported_total", direct)] == 1
    assert samples[("emsedge_cfx_listen_connections", ())] == 2
    assert samples[("emsedge_cfx_listen_connections_accepted_total", ())] == 6
    assert samples[("emsedge_cfx_listen_refused_links_total", ())] == 2

    snapshot["requests"]["counters"]["answered"] = 6  # read at scrape time, nothing copied
    assert metric_samples(metrics_text(state))[
        ("emsedge_cfx_requests_total", (("outcome", "answered"), ("transport", "broker")))] == 6


def test_metrics_show_only_the_cfx_request_listeners_that_are_configured() -> None:
    state = make_state()
    state.cfx = lambda: cfx_snapshot(listen=False)
    names = {name for name, _ in metric_samples(metrics_text(state))}
    assert "emsedge_cfx_requests_total" in names
    assert not {n for n in names if n.startswith("emsedge_cfx_listen_")}
    assert {labels for name, labels in metric_samples(metrics_text(state))
            if name == "emsedge_cfx_request_listener_up"} == {(("transport", "broker"),)}

    state.cfx = lambda: cfx_snapshot(requests=False, listen=False)
    names = {name for name, _ in metric_samples(metrics_text(state))}
    assert "emsedge_cfx_sent_total" in names
    assert not {n for n in names if n.startswith(("emsedge_cfx_request", "emsedge_cfx_listen_"))}


@pytest.mark.asyncio
async def test_unknown_paths_methods_and_garbage_get_http_errors_and_head_has_no_body() -> None:
    got = await serve_and(make_state(), [("GET", "/nope"), ("POST", "/healthz"), ("HEAD", "/healthz")])
    assert [code for code, _, _ in got] == [404, 405, 200]
    assert got[2][2] == b""
    assert int(got[2][1]["Content-Length"]) > 0
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_http, "127.0.0.1:0", make_state())
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"nonsense\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 400")
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_a_broken_buffer_stats_callable_does_not_break_healthz() -> None:
    state = make_state()

    def broken() -> Any:
        raise RuntimeError("database is closed")

    state.buffer_stats = broken
    [(code, _, body)] = await serve_and(state, [("GET", "/healthz")])
    assert code == 503
    assert json.loads(body)["buffer"]["writable"] is False


@pytest.mark.asyncio
async def test_a_listener_that_cannot_bind_is_reported_and_does_not_stop_the_gateway() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with anyio.create_task_group() as tg:
            assert await tg.start(serve_http, f"127.0.0.1:{port}", make_state()) is None


@pytest.mark.asyncio
async def test_a_wedged_buffer_writer_stops_the_watchdog_pings_and_fails_healthz(
    notify_path: str, bind_notify: BindNotify, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading  # noqa: PLC0415

    import emsedge.service as service  # noqa: PLC0415
    from emsedge.buffer import Buffer  # noqa: PLC0415
    from emsedge.config import BufferConfig  # noqa: PLC0415
    from emsedge.topics import Topics  # noqa: PLC0415

    monkeypatch.setattr(service, "WRITER_STUCK_AFTER", 0.3)
    fake = bind_notify(notify_path)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    buf = Buffer(BufferConfig(path=tmp_path / "b.db", min_free_bytes=0), gateway="gw", topics=Topics("a/b"))
    state = make_state()
    state.equipment["aoi-1"].state = EquipmentState.CONNECTED
    state.buffer_stats = buf.stats
    fsync = threading.Event()  # a commit stuck in fsync on a dying SD card

    def stuck_commit() -> None:
        fsync.wait(10)

    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        await tg.start(run_watchdog, notifier, state)
        tg.start_soon(buf._call, stuck_commit)
        with anyio.fail_after(5):
            while not state.writer_wedged():  # noqa: ASYNC110 - waits for the bound to pass
                await anyio.sleep(0.05)
        await anyio.sleep(0.1)  # the watchdog's next round has seen it
        fake.messages(timeout=0.01)
        await anyio.sleep(0.3)
        during = fake.messages(timeout=0.01)
        code, body = state.health()
        fsync.set()
        with anyio.fail_after(5):
            while "WATCHDOG=1" not in fake.messages(timeout=0.001):  # noqa: ASYNC110 - polling the notify socket
                await anyio.sleep(0.05)
        healthy, _ = state.health()
        tg.cancel_scope.cancel()
    assert "WATCHDOG=1" not in during
    assert (code, body["status"], body["buffer"]["writer_wedged"]) == (503, "failing", True)
    assert healthy == 200
