"""The virtual line through a gateway with `cfx:` on, against a real RabbitMQ that goes away mid-run.

Every board's CFX unit messages (MaterialsInstalled on the placer, UnitsProcessed on the oven, UnitsInspected
on the AOI, UnitsTested on the tester) carry its serial, each inside its machine's WorkStarted/WorkCompleted
transaction; the messages of one handle stay in the order the gateway recorded them, across a broker
outage; and the daemon's request listener answers once the broker is back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from proton import Message
from proton.utils import BlockingConnection
from support import REPO, Mosquitto, Subscriber, free_port
from support.daemon import EMSEDGE, Daemon, wait_until
from support.rabbitmq import RabbitMQ, available, read_queue

from emsedge.publish.cfx_mapping import unique_id
from emsedge.simulate import load_virtual_line
from emsedge.simulate.config import point_gateway_config

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed (make rabbitmq)"),
]

BOARDS = 3
PREFIX = "demo-plant.virtual-line"
UNIT_MESSAGES = {
    "pnp-1": ("CFX.Production.Assembly.MaterialsInstalled", "InstalledMaterials"),
    "reflow-1": ("CFX.Production.Processing.UnitsProcessed", "UnitProcessData"),
    "aoi-1": ("CFX.Production.TestAndInspection.UnitsInspected", "InspectedUnits"),
    "ict-1": ("CFX.Production.TestAndInspection.UnitsTested", "TestedUnits"),
}


def line_file(tmp_path: Path) -> Path:
    """The demo line on free ports, three boards, short cycle times, no faults."""
    ports = load_virtual_line(REPO / "config" / "virtual-line.yaml").with_free_ports()
    config = {
        "line": {"speed": 1, "tick": "50ms", "seed": 11, "first_serial": 801, "board_interval": "1s",
                 "max_boards": BOARDS},
        "pick_and_place": {"port": ports.pick_and_place.port, "setup_time": "1s", "transfer_time": "100ms",
                           "placement_time": "600ms", "pick_error_rate": 0.0},
        "reflow_oven": {"port": ports.reflow_oven.port, "dwell_time": "1s", "min_spacing": "300ms"},
        "aoi": {"port": ports.aoi.port, "inspection_time": "300ms", "defect_rate": 0.4},
        "ict": {"folder": str(tmp_path / "var" / "ict-1" / "out"), "test_time": "200ms", "fail_rate": 0.3},
        "schedule": {"faults": []},
    }
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def are_you_there(url: str, handle: str) -> dict[str, Any]:
    connection = BlockingConnection(url, user="guest", password="guest", allowed_mechs="PLAIN", timeout=15)
    reply_to = f"/queue/vl-replies-{uuid.uuid4().hex[:8]}"
    try:
        replies = connection.create_receiver(reply_to, credit=1)
        request = {"MessageName": "CFX.AreYouThereRequest", "Version": "2.1",
                   "TimeStamp": "2026-11-24T10:15:03.250+00:00", "UniqueID": str(uuid.uuid4()),
                   "Source": "mes.1", "Target": handle, "RequestID": "REQUEST-vl", "MessageBody": {"CFXHandle": handle}}
        message = Message(body=orjson.dumps(request), reply_to=reply_to)
        message.inferred = True
        connection.create_sender(f"/queue/vl-{handle}").send(message, timeout=10)
        response = replies.receive(timeout=15)
        replies.accept()
        return dict(orjson.loads(bytes(response.body)))
    finally:
        connection.close()


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:  # 503 while degraded: the body is the same document
        return dict(json.loads(exc.read()))
    except OSError:
        return {}


def events(subscriber: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [p for p in subscriber.payloads() if (p.get("event") or {}).get("type") == kind]


def test_every_board_is_traced_by_serial_across_four_machines_and_each_handle_keeps_its_order_over_an_outage(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, rabbitmq: RabbitMQ
) -> None:
    queue = rabbitmq.declare_durable_queue(f"cfx-line-{uuid.uuid4().hex[:8]}")
    simulate_log = open(tmp_path / "simulate.log", "wb")  # noqa: SIM115 - closed below
    truth_file = tmp_path / "line-events.jsonl"
    simulator = subprocess.Popen([EMSEDGE, "simulate", "-c", str(line_file(tmp_path)), "--hold",
                                  "--events", str(truth_file)], stdout=simulate_log, stderr=simulate_log)
    line = load_virtual_line(tmp_path / "line.yaml")
    gateway_file = tmp_path / "gateway.yaml"
    env = point_gateway_config(REPO / "config" / "demo.yaml", line, gateway_file)
    data = yaml.safe_load(gateway_file.read_text())
    data["cfx"] = {"broker": rabbitmq.url, "address": queue, "username": "guest", "password": "guest",
                   "heartbeat": "300s", "publish_timeout": "5s", "backoff": {"initial": "200ms", "max": "1s"},
                   "requests": {"address": "/queue/vl-{handle}"}}
    gateway_file.write_text(yaml.safe_dump(data, sort_keys=False))
    http_port = free_port()
    gateway = Daemon(gateway_file, tmp_path / "gateway.log", cwd=tmp_path, env={
        **env, "EMSEDGE_MQTT__URL": mosquitto.url, "EMSEDGE_BUFFER__PATH": str(tmp_path / "buffer.db"),
        "EMSEDGE_HTTP__LISTEN": f"127.0.0.1:{http_port}",
    })
    try:
        wait_until(lambda: b"virtual line up" in (tmp_path / "simulate.log").read_bytes(), 60)
        gateway.start()
        wait_until(lambda: {p["equipment"] for p in events(subscriber, "connection_restored")}
                   >= {"pnp-1", "reflow-1", "aoi-1"} and "cfx requests: listening" in gateway.log(), 60)
        simulator.send_signal(signal.SIGUSR1)  # the line's clock starts
        wait_until(lambda: len(events(subscriber, "materials_installed")) >= 1, 30)
        rabbitmq.ctl("stop_app")  # the broker goes away while boards are on the line
        wait_until(lambda: "cfx link lost" in gateway.log(), 30)
        rabbitmq.ctl("start_app")
        wait_until(lambda: gateway.log().count("cfx link up") >= 2, 60)
        wait_until(lambda: len({e["event"]["serial"] for e in events(subscriber, "unit_tested")}) >= BOARDS, 60)
        wait_until(lambda: gateway.log().count("cfx requests: listening") >= 2, 30)
        answer = are_you_there(rabbitmq.url, f"{PREFIX}.aoi-1")
        wait_until(lambda: (health(http_port).get("cfx") or {}).get("requests", {}).get("counters", {})
                   .get("answered", 0) >= 1, 15)
        requests_health = health(http_port)["cfx"]["requests"]
        assert gateway.stop(timeout=30) == 0
    except AssertionError:
        print(gateway.log()[-4000:])
        raise
    finally:
        gateway.kill()
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(timeout=15)
        simulate_log.close()
    assert answer["MessageName"] == "CFX.AreYouThereResponse" and answer["RequestID"] == "REQUEST-vl"
    assert requests_health["connected"] is True and requests_health["counters"]["received"] == 1

    envelopes = read_queue(rabbitmq.url, queue)
    serials = {e["event"]["serial"] for e in events(subscriber, "materials_installed")}
    assert len(serials) == BOARDS, serials
    # Traceability: each machine's unit message names the board, inside that machine's transaction.
    for equipment, (name, units_field) in UNIT_MESSAGES.items():
        handle = f"{PREFIX}.{equipment}"
        mine = [e for e in envelopes if e["Source"] == handle]
        started = {e["MessageBody"]["Units"][0]["UnitIdentifier"]: e["MessageBody"]["TransactionID"]
                   for e in mine if e["MessageName"] == "CFX.Production.WorkStarted"}
        completed = {e["MessageBody"]["Units"][0]["UnitIdentifier"]: e["MessageBody"]["TransactionID"]
                     for e in mine if e["MessageName"] == "CFX.Production.WorkCompleted"}
        unit_messages = [e for e in mine if e["MessageName"] == name]
        by_serial: dict[str, set[str]] = defaultdict(set)
        for e in unit_messages:
            for unit in e["MessageBody"][units_field]:
                by_serial[unit["UnitIdentifier"]].add(e["MessageBody"]["TransactionId"])
        for serial in serials:
            assert serial in by_serial, f"{name} for {serial} never reached CFX"
            assert by_serial[serial] == {started[serial]} == {completed[serial]}, (equipment, serial)
    # Down to the component: the reels, part numbers and designators the line used for each board.
    boards = [json.loads(line)["board"] for line in truth_file.read_text().splitlines()
              if line.strip() and json.loads(line)["kind"] == "board_inspected"]
    assert sorted(b["serial"] for b in boards) == sorted(serials)
    for board in boards:
        (installed,) = [e["MessageBody"]["InstalledMaterials"] for e in envelopes
                        if e["MessageName"] == "CFX.Production.Assembly.MaterialsInstalled"
                        and e["MessageBody"]["InstalledMaterials"][0]["UnitIdentifier"] == board["serial"]][:1]
        assert {m["CarrierLocation"]["LocationIdentifier"].removeprefix("feeder_"): {
            "reel_id": m["Material"]["UniqueIdentifier"], "part_number": m["Material"]["InternalPartNumber"],
            "ref_designators": [c["ReferenceDesignator"] for c in m["InstalledComponents"]]}
            for m in installed} == board["materials"], board["serial"]
    # Order per handle: first arrivals (a replay repeats a UniqueID) follow the gateway's seq.
    position = {}
    for p in subscriber.payloads():
        if "id" in p and "seq" in p:
            for i in range(3):
                position[unique_id(str(p["id"]), i)] = (int(p["seq"]), i)
    seen: set[str] = set()
    per_handle: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in envelopes:
        if e["UniqueID"] in position and e["UniqueID"] not in seen:
            seen.add(e["UniqueID"])
            per_handle[e["Source"]].append(position[e["UniqueID"]])
    assert set(per_handle) >= {f"{PREFIX}.{equipment}" for equipment in UNIT_MESSAGES}
    for handle, order in per_handle.items():
        assert order == sorted(order), f"{handle}: CFX messages out of the gateway's order"
    print(f"cfx: {len(envelopes)} messages, {len(envelopes) - len({e['UniqueID'] for e in envelopes})} "
          f"duplicates, {sum(map(len, per_handle.values()))} from records, handles {sorted(per_handle)}")
