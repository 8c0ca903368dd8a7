"""The CFX output against a real RabbitMQ node with the AMQP 1.0 plugin, read by an independent receiver."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from proton import Timeout
from proton.utils import BlockingConnection, BlockingReceiver
from support import Mosquitto, free_port
from support.daemon import EMSEDGE, Daemon, Equipment, gateway_config, wait_until
from support.rabbitmq import RabbitMQ, available

from emsedge.config import CfxConfig
from emsedge.publish.cfx import CfxPublisher

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed (make rabbitmq)"),
]

HANDLE = "plant1.line1.ict-1"
PASSWORD = "cfx-pw-7f3a91"


def payload(rid: str, seq: int, event: dict[str, object]) -> bytes:
    return orjson.dumps({"schema": "emsedge/event@1", "id": rid, "seq": seq, "gateway": "gw", "equipment": "ict-1",
                         "equipment_type": "ict", "ts": "2026-11-24T10:15:03.250Z", "event": event})


def drain(receiver: BlockingReceiver, connection: BlockingConnection, expected: int) -> list[object]:
    got = []
    deadline = time.monotonic() + 20
    while len(got) < expected and time.monotonic() < deadline:
        try:
            message = receiver.receive(timeout=1)
        except Timeout:
            continue
        got.append(message)
        receiver.accept()
    return got


@pytest.mark.asyncio
async def test_records_arrive_as_cfx_envelopes_with_the_sdk_properties_and_route_by_subject(
    rabbitmq: RabbitMQ,
) -> None:
    config = CfxConfig(broker=rabbitmq.url, address="/exchange/amq.topic", username="guest", password="guest")
    connection = BlockingConnection(rabbitmq.url, user="guest", password="guest", allowed_mechs="PLAIN")
    everything = connection.create_receiver("/exchange/amq.topic/plant1.#", credit=100)
    tests_only = connection.create_receiver("/exchange/amq.topic/#.CFX.Production.TestAndInspection.*", credit=100)
    publisher = CfxPublisher(config, {"ict-1": HANDLE})
    publisher._start_thread()
    try:
        with anyio.fail_after(20):
            await publisher.wait_connected()
        results = await publisher.publish_batch(
            [
                ("t", payload("r1", 1, {"type": "unit_tested", "serial": "PCB-1", "result": "pass",
                                        "test_method": "ict", "tests": [{"name": "r1", "result": "pass",
                                        "measurements": [{"name": "r1", "value": 10.0, "unit": "Ohm"}]}]})),
                ("t", payload("r2", 2, {"type": "station_state_changed", "state": 1100, "old_state": 2000})),
                ("t", payload("r3", 3, {"type": "connection_lost", "reason": "x"})),
            ],
            qos=1,
        )
        assert [r.ok for r in results] == [True, True, True]
        assert publisher.counters.accepted == 5  # EndpointConnected on link up, then the four
        all_messages = drain(everything, connection, 5)
        routed = drain(tests_only, connection, 1)
    finally:
        await publisher.close()
        connection.close()
    names = [m.properties["cfx-message"] for m in all_messages]  # type: ignore[attr-defined]
    assert names == ["CFX.EndpointConnected", "CFX.Production.WorkStarted",
                     "CFX.Production.TestAndInspection.UnitsTested",
                     "CFX.Production.WorkCompleted", "CFX.ResourcePerformance.StationStateChanged"]
    tested = all_messages[2]
    envelope = orjson.loads(bytes(tested.body))  # type: ignore[attr-defined]
    assert tested.id == envelope["UniqueID"]  # type: ignore[attr-defined]
    assert tested.subject == f"{HANDLE}.CFX.Production.TestAndInspection.UnitsTested"  # type: ignore[attr-defined]
    assert tested.content_type == 'application/json; charset="utf-8"'  # type: ignore[attr-defined]
    assert tested.durable  # type: ignore[attr-defined]
    assert tested.properties["cfx-handle"] == HANDLE  # type: ignore[attr-defined]
    assert tested.properties["cfx-topic"] == "CFX.Production.TestAndInspection"  # type: ignore[attr-defined]
    measurement = envelope["MessageBody"]["TestedUnits"][0]["Tests"][0]["Measurements"][0]
    assert measurement["$type"] == "CFX.Structures.NumericMeasurement, CFX"
    assert [m.properties["cfx-message"] for m in routed] == [  # type: ignore[attr-defined]
        "CFX.Production.TestAndInspection.UnitsTested"
    ]


def test_daemon_announces_its_endpoints_beats_at_the_configured_rate_and_reports_cfx_in_healthz_and_metrics(
    tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment, rabbitmq: RabbitMQ
) -> None:
    queue = rabbitmq.declare_durable_queue(f"cfx-daemon-{uuid.uuid4().hex[:8]}")
    http_port = free_port()
    user = f"gw-{uuid.uuid4().hex[:6]}"
    rabbitmq.ctl("add_user", user, PASSWORD)
    rabbitmq.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    config = gateway_config(
        tmp_path, f"mqtt://127.0.0.1:{mosquitto.port}", equipment.port,
        http={"listen": f"127.0.0.1:{http_port}"},
        cfx={"broker": rabbitmq.url, "address": queue, "username": user, "password_file": str(secret(tmp_path)),
             "heartbeat": "1s"},
    )
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        wait_until(lambda: "cfx link up" in daemon.log(), timeout=30)
        wait_until(lambda: health(http_port).get("cfx", {}).get("counters", {}).get("heartbeats", 0) >= 3,
                   timeout=20)
        body = health(http_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert daemon.stop(timeout=30) == 0
    finally:
        daemon.kill()
    assert body["cfx"]["connected"] is True
    assert body["cfx"]["broker"] == rabbitmq.url
    assert PASSWORD not in daemon.log() + json.dumps(body) + metrics
    assert "emsedge_cfx_connected 1.0" in metrics
    assert re.search(r"^emsedge_cfx_accepted_total [1-9]", metrics, re.M)
    envelopes = [orjson.loads(bytes(m.body)) for m in read_all(rabbitmq.url, queue)]
    names = [e["MessageName"] for e in envelopes]
    assert names[0] == "CFX.EndpointConnected"
    assert envelopes[0]["MessageBody"]["CFXHandle"] == "plant-t.line-t.reflow-1"
    assert names[-1] == "CFX.EndpointShuttingDown"
    beats = [datetime.fromisoformat(e["TimeStamp"]) for e in envelopes if e["MessageName"] == "CFX.Heartbeat"]
    assert len(beats) >= 3
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(beats)]
    assert all(0.8 <= g <= 1.6 for g in gaps), gaps
    assert "CFX.ResourcePerformance.ProcessDataRecorded" in names


def secret(tmp_path: Path) -> Path:
    path = tmp_path / "cfx.pass"
    path.write_text(PASSWORD + "\n")
    return path


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except OSError:
        return {}


def read_all(url: str, address: str) -> list[Any]:
    connection = BlockingConnection(url, user="guest", password="guest", allowed_mechs="PLAIN")
    receiver = connection.create_receiver(address, credit=500)
    got = []
    try:
        while True:
            try:
                got.append(receiver.receive(timeout=2))
            except Timeout:
                break
            receiver.accept()
    finally:
        connection.close()
    return got


def test_check_config_online_checks_the_cfx_broker_and_fails_when_it_is_unreachable(
    tmp_path: Path, mosquitto: Mosquitto, rabbitmq: RabbitMQ
) -> None:
    def check(broker: str) -> subprocess.CompletedProcess[str]:
        config = gateway_config(
            tmp_path, f"mqtt://127.0.0.1:{mosquitto.port}", 1, equipment=[],
            cfx={"broker": broker, "address": "/exchange/amq.topic", "username": "guest", "password": "guest",
                 "connect_timeout": "3s"},
        )
        return subprocess.run([EMSEDGE, "check-config", "--online", str(config)], capture_output=True,
                              text=True, timeout=60, check=False)

    good = check(rabbitmq.url)
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"cfx     {rabbitmq.url}: OK, link attached to /exchange/amq.topic" in good.stdout
    bad = check(f"amqp://127.0.0.1:{free_port()}")
    assert bad.returncode == 1
    assert "cfx     amqp://127.0.0.1:" in bad.stdout and "FAILED" in bad.stdout
