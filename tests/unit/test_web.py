"""The status page's server side: config guards, auth, the live stream's bounds, and the line model's bounds."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from support.daemon import EMSEDGE

from emsedge.adapters.base import EquipmentHealth, EquipmentState
from emsedge.config import HttpConfig
from emsedge.schema import EventType, PollReadings, event, reading, telemetry, utc_iso
from emsedge.service import GatewayState
from emsedge.web.app import WebSources
from emsedge.web.model import LineModel
from emsedge.web.server import serve_http

HEAD = "gateway: {id: gw, site: s, line: l}\n"


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return subprocess.run([EMSEDGE, "check-config", str(path)], capture_output=True, text=True, check=False,
                          timeout=60)


def test_check_config_refuses_a_network_listener_without_auth_with_a_located_error(tmp_path: Path) -> None:
    result = check_config(tmp_path, HEAD + "mqtt: {url: 'mqtt://127.0.0.1:1883'}\nhttp: {listen: '0.0.0.0:9108'}\n")
    assert result.returncode != 0
    assert f"{tmp_path / 'gw.yaml'}:3:" in result.stderr + result.stdout
    assert "http.auth" in result.stderr + result.stdout and "allow_insecure" in result.stderr + result.stdout


@pytest.mark.parametrize("http", [
    "{listen: '127.0.0.1:9108'}",
    "{listen: 'localhost:9108'}",
    "{listen: '[::1]:9108'}",
    "{listen: '0.0.0.0:9108', allow_insecure: true}",
    "{listen: ':9108', auth: {bearer_token_file: TOKEN}}",
])
def test_check_config_accepts_loopback_explicit_insecure_or_auth(tmp_path: Path, http: str) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    result = check_config(tmp_path, HEAD + f"http: {http.replace('TOKEN', str(token))}\n")
    assert result.returncode == 0, result.stderr
    assert "s3cret-token" not in result.stdout + result.stderr


def test_auth_needs_exactly_one_method(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    with pytest.raises(ValueError, match="exactly one"):
        HttpConfig.model_validate({"listen": ":1", "auth": {"bearer_token_file": token, "basic_auth_file": token}})


STATS = SimpleNamespace(count=0, bytes=0, oldest_created=None, evicted_total=0, dead_letters=0, writable=True,
                        last_error=None)


def make_state() -> GatewayState:
    up = EquipmentHealth(state=EquipmentState.CONNECTED, polls=3)
    return GatewayState(
        gateway_id="gw", version="0.1.0", started_at=utc_iso(), equipment={"reflow-1": up},
        equipment_info={"reflow-1": ("reflow_oven", "modbus")}, buffer_stats=lambda: STATS,
        broker_connected=lambda: True, broker_url=lambda: "mqtt://user:pw@127.0.0.1:1883",
    )


async def request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with anyio.fail_after(5):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
            raw = b""
            try:
                while True:
                    raw += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.asyncio
async def test_with_a_bearer_token_every_path_needs_it_except_healthz_from_loopback(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    config = HttpConfig.model_validate({"listen": "127.0.0.1:0", "auth": {"bearer_token_file": token}})
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve_http("127.0.0.1:0", make_state(), config=config,
                                                              task_status=task_status))
        for path in ("/", "/metrics", "/api/line", "/static/app.js", "/events"):
            assert (await request(port, path))[0] == 401, path
            assert (await request(port, path, {"Authorization": "Bearer wrong"}))[0] == 401, path
        assert (await request(port, "/", {"Authorization": "Bearer tok-123"}))[0] == 200
        code, body = await request(port, "/api/line", {"Authorization": "Bearer tok-123"})
        assert code == 200 and b"tok-123" not in body
        assert (await request(port, "/healthz"))[0] == 200  # the container health check asks from loopback
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_basic_auth_is_checked_and_the_broker_password_never_reaches_the_page(tmp_path: Path) -> None:
    pair = tmp_path / "basic"
    pair.write_text("tech:line-pw\n")
    config = HttpConfig.model_validate({"listen": "127.0.0.1:0", "auth": {"basic_auth_file": pair}})
    good = "Basic " + base64.b64encode(b"tech:line-pw").decode()
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve_http("127.0.0.1:0", make_state(), config=config,
                                                              task_status=task_status))
        assert (await request(port, "/api/line"))[0] == 401
        code, body = await request(port, "/api/line", {"Authorization": good})
        assert code == 200
        snapshot = json.loads(body)
        assert snapshot["delivery"]["outputs"][0]["url"] == "mqtt://127.0.0.1:1883"
        assert b"line-pw" not in body and b":pw@" not in body
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_live_clients_beyond_the_limit_get_503_and_connections_beyond_the_limit_are_closed() -> None:
    config = HttpConfig.model_validate({"listen": "127.0.0.1:0", "max_live_clients": 2, "max_connections": 5})
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve_http("127.0.0.1:0", make_state(), config=config,
                                                              task_status=task_status))
        streams = []
        for _ in range(2):
            s = await anyio.connect_tcp("127.0.0.1", port)
            await s.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(5):
                assert (await s.receive()).startswith(b"HTTP/1.1 200")
            streams.append(s)
        assert (await request(port, "/events"))[0] == 503
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]  # 5 open now: the limit
        extra = await anyio.connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await extra.receive()  # closed at once, nothing read
        for s in [*streams, *idle, extra]:
            await s.aclose()
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_a_stuck_browser_is_dropped_and_does_not_slow_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    import emsedge.web.app as app  # noqa: PLC0415

    monkeypatch.setattr(app, "SEND_TIMEOUT", 1.0)
    monkeypatch.setattr(app, "PUSH_INTERVAL", 0.05)
    monkeypatch.setattr(app, "HEARTBEAT", 0.05)
    state = make_state()
    line = LineModel()
    big = [reading(f"s{i:05d}", "x" * 150, ts=utc_iso()) for i in range(2000)]
    line.observe([telemetry("reflow-1", "reflow_oven", big)])
    config = HttpConfig(listen="127.0.0.1:0", max_live_clients=1)
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve_http(
            "127.0.0.1:0", state, config=config, sources=WebSources(state, line), task_status=task_status))
        stuck = await anyio.connect_tcp("127.0.0.1", port)
        await stuck.send(b"GET /events?machine=reflow-1 HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        await anyio.sleep(0.3)
        assert (await request(port, "/events"))[0] == 503  # the one live slot is taken by the stuck client
        with anyio.fail_after(20):
            while True:  # the server gives up on it and frees the slot; meanwhile it answers everyone else
                assert (await request(port, "/healthz"))[0] == 200
                async with await anyio.connect_tcp("127.0.0.1", port) as probe:
                    await probe.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                    if (await probe.receive()).startswith(b"HTTP/1.1 200"):
                        break
                await anyio.sleep(0.2)
        await stuck.aclose()
        tg.cancel_scope.cancel()


def test_line_model_is_bounded_and_joins_boards_by_serial() -> None:
    line = LineModel(max_signals=10, max_sparklines=3, max_boards=2, max_events=4)
    readings = [reading(f"sig{i}", float(i), unit="Cel", ts=utc_iso()) for i in range(15)]
    line.observe([telemetry("oven", "reflow_oven", readings)])
    detail = line.machine_detail("oven", 100)
    assert len(detail["signals"]) == 10 and detail["not_shown"] == 5
    assert sum(1 for s in detail["signals"] if s["spark"] is not None) == 3
    for n in range(5):
        line.observe([event("aoi", "aoi", EventType.UNIT_INSPECTED, serial=f"B{n}", result="fail", defects=["bridge"])])
    assert [b["serial"] for b in line.board_list(10)] == ["B4", "B3"]
    assert len(line.machine_detail("aoi", 100)["events"]) == 4
    line.observe([
        event("pnp", "pick_and_place", EventType.MATERIALS_INSTALLED, serial="B4",
              values={"feeder_1_reel_id": {"value": "R1"}, "feeder_1_part_number": {"value": "RES-10K"}}),
        event("oven", "reflow_oven", EventType.UNIT_PROCESSED, serial="B4",
              values={"zone1_top_actual": {"value": 200.0}, "zone8_top_actual": {"value": 243.5}}),
    ])
    [board] = line.board_list(10, "b4")
    assert board["placement"]["reels"] == {"feeder_1": "R1"} and board["placement"]["parts"] == {"feeder_1": "RES-10K"}
    assert board["reflow"]["peak"] == 243.5 and board["inspections"][0]["defects"] == ["bridge"]
    assert board["stations"] == ["aoi", "pnp", "oven"]


def test_telemetry_is_folded_lazily_but_the_page_always_reads_the_latest_value() -> None:
    now = [100.0]
    line = LineModel(sparkline_step=3.0, fold_interval=1.0, clock=lambda: now[0])

    def poll(value: float, quality: str = "good") -> None:
        line.observe([telemetry("oven", "reflow_oven", [reading("zone1", value, unit="Cel", quality=quality,
                                                                ts=utc_iso()), reading("belt", 1, ts=utc_iso())])])

    def zone1() -> dict[str, Any]:
        return next(s for s in line.machine_detail("oven", 10)["signals"] if s["name"] == "zone1")

    poll(1.0)  # the first poll of a machine is folded at once
    now[0] = 100.5
    poll(2.0)
    poll(3.0, quality="bad")
    assert line.machines["oven"].pending, "polls within fold_interval wait for the next fold"
    assert zone1()["value"] == 3.0 and zone1()["quality"] == "bad"  # reading the page folds first
    now[0] = 101.0
    poll(4.0)
    now[0] = 102.2  # > fold_interval since the last fold: folded in observe(), without anyone reading
    poll(5.0)
    assert not line.machines["oven"].pending
    now[0] = 103.3  # still the slot [102, 105) of 5.0
    poll(6.0)
    assert zone1()["value"] == 6.0
    assert zone1()["spark"] == [1.0, 6.0]  # one point per slot (99, 102): the slot's latest good value
    assert line.machine_summary("oven", now[0])["signals"] == 2


def test_polls_kept_as_columns_are_filed_whole_and_never_overtake_newer_readings() -> None:
    now = [100.0]
    line = LineModel(fold_interval=1.0, clock=lambda: now[0])
    names, units = ("zone1", "belt"), ("Cel", None)

    def columns(zone1: float, belt: int) -> None:
        line.observe([telemetry("oven", "reflow_oven", PollReadings(names, units, [zone1, belt], utc_iso()))])

    def shown() -> dict[str, Any]:
        return {s["name"]: (s["value"], s["quality"]) for s in line.machine_detail("oven", 10)["signals"]}

    columns(1.0, 1)  # folded at once: the first poll of a machine
    now[0] = 100.2
    columns(2.0, 2)
    line.observe([telemetry("oven", "reflow_oven", [reading("zone1", None, quality="bad", ts=utc_iso())])])
    assert shown() == {"zone1": (None, "bad"), "belt": (2, "good")}  # the plain record came after the poll
    columns(3.0, 3)
    columns(4.0, 4)
    assert line.machines["oven"].pending_poll is not None  # the newest poll waits, whole, for the next read
    assert shown() == {"zone1": (4.0, "good"), "belt": (4, "good")}
    line.observe([telemetry("oven", "reflow_oven", PollReadings(("other",), (None,), [7], utc_iso()))])
    columns(5.0, 5)  # another signal set in between: the earlier poll's readings are kept
    assert shown() == {"zone1": (5.0, "good"), "belt": (5, "good"), "other": (7, "good")}


def test_alarms_come_and_go_with_fault_events_and_e58_state_is_kept() -> None:
    line = LineModel()
    line.observe([event("pnp", "pick_and_place", EventType.FAULT_OCCURRED, fault_code="1201",
                        fault_occurrence_id="f-1", text="Feeder jam")])
    line.observe([event("pnp", "pick_and_place", EventType.STATION_STATE_CHANGED, state=5000,
                        state_name="unscheduled_down")])
    summary = line.machine_summary("pnp", 0.0)
    assert [a["code"] for a in summary["alarms"]] == ["1201"]
    assert summary["e58"]["name"] == "unscheduled_down"
    line.observe([event("pnp", "pick_and_place", EventType.FAULT_CLEARED, fault_code="1201",
                        fault_occurrence_id="f-1")])
    assert line.machine_summary("pnp", 0.0)["alarms"] == []


def test_a_record_the_model_cannot_read_is_skipped_and_never_raises() -> None:
    line = LineModel()
    broken = telemetry("oven", "reflow_oven", [{"signal": "a", "value": 1}])
    broken.body["readings"] = 5  # not a list
    line.observe([broken, telemetry("oven", "reflow_oven", [reading("b", 2, ts=utc_iso())])])
    assert line.skipped == 1
    assert [s["name"] for s in line.machine_detail("oven", 10)["signals"]] == ["b"]


def self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime as dt  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "http.crt", directory / "http.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.asyncio
async def test_tls_serves_the_page_and_healthz_over_https(tmp_path: Path) -> None:
    import ssl  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    cert, key = self_signed(tmp_path)
    config = HttpConfig.model_validate({"listen": "127.0.0.1:0", "tls": {"cert_file": cert, "key_file": key}})
    context = ssl.create_default_context(cafile=str(cert))

    def get(url: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            return answer.status, answer.read()

    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve_http("127.0.0.1:0", make_state(), config=config,
                                                              task_status=task_status))
        code, body = await anyio.to_thread.run_sync(get, f"https://127.0.0.1:{port}/healthz")
        assert code == 200 and json.loads(body)["gateway"] == "gw"
        code, body = await anyio.to_thread.run_sync(get, f"https://127.0.0.1:{port}/")
        assert code == 200 and b"emsedge" in body
        async with await anyio.connect_tcp("127.0.0.1", port) as plain:  # plain HTTP gets no data
            await plain.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    received += await plain.receive()
            assert b"gateway" not in received
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_a_certificate_that_cannot_be_loaded_leaves_the_gateway_running_without_the_listener(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "bad.crt", tmp_path / "bad.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    config = HttpConfig.model_validate({"listen": "127.0.0.1:0", "tls": {"cert_file": cert, "key_file": key}})
    async with anyio.create_task_group() as tg:
        assert await tg.start(lambda task_status: serve_http("127.0.0.1:0", make_state(), config=config,
                                                              task_status=task_status)) is None


@pytest.mark.asyncio
async def test_healthz_and_metrics_heads_are_byte_for_byte_what_they_always_were() -> None:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_http, "127.0.0.1:0", make_state())
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = b""
            with anyio.fail_after(5):
                try:
                    while True:
                        raw += await stream.receive()
                except anyio.EndOfStream:
                    pass
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\nCache-Control: no-store\r\nConnection: close")
        assert body.endswith(b"}\n") and b": " not in body  # compact JSON and a newline, as before
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_stopping_ends_live_streams_cleanly_and_at_once() -> None:
    import time  # noqa: PLC0415

    config = HttpConfig(listen="127.0.0.1:0")
    async with await_serving(config) as (tg, port):
        client = await anyio.connect_tcp("127.0.0.1", port)
        await client.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        with anyio.fail_after(5):
            assert (await client.receive()).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 0.9  # no wait for uvicorn's graceful-shutdown timeout
    received = b""
    with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
        while True:
            received += await client.receive()
    assert received.endswith(b"0\r\n\r\n")  # the stream was ended, not cut
    await client.aclose()


@contextlib.asynccontextmanager
async def await_serving(config: HttpConfig) -> AsyncIterator[tuple[anyio.abc.TaskGroup, int]]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda task_status: serve_http("127.0.0.1:0", make_state(), config=config,
                                                              task_status=task_status))
        yield tg, port
