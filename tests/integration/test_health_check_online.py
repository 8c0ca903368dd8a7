"""`emsedge check-config FILE --online` against real equipment: a Modbus process, an OPC UA server and the
virtual line (OPC UA, Modbus and HSMS simulators)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from opcua_server import PnPServer
from support import REPO, Mosquitto, free_port
from support.daemon import EMSEDGE, Equipment, gateway_config, wait_until

from emsedge.adapters.opcua.config import OpcUaEquipment
from emsedge.tooling import read_equipment


def check_online(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EMSEDGE, "check-config", str(config), "--online"], check=False, capture_output=True,
                          text=True, timeout=60)


def table_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[0].startswith("reflow"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_online_check_reads_every_signal_once_and_prints_a_table(
    tmp_path: Path, equipment: Equipment, mosquitto: Mosquitto
) -> None:
    result = check_online(gateway_config(tmp_path, mosquitto.url, equipment.port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"broker  {mosquitto.url}: OK, connected and logged in (anonymous)" in result.stdout
    assert "EQUIPMENT  SIGNAL" in result.stdout
    rows = table_rows(result.stdout)
    assert rows[("reflow-1", "zone1_top_temp")] == ["215.5", "Cel", "good"]
    assert rows[("reflow-1", "conveyor_speed")] == ["72.5", "cm/min", "good"]
    assert rows[("reflow-1", "board_count")] == ["123456", "good"]
    assert "1 of 1 equipment OK" in result.stdout


def test_online_check_fails_for_unreachable_equipment_and_bad_signals(tmp_path: Path, equipment: Equipment) -> None:
    path = gateway_config(tmp_path, "mqtt://127.0.0.1:1", equipment.port)
    config = yaml.safe_load(path.read_text())
    dead = {**config["equipment"][0], "id": "reflow-dead",
            "connection": {"host": "127.0.0.1", "port": 1, "timeout": "500ms"}}
    config["equipment"][0]["signals"].append({"name": "beyond_the_table", "table": "holding", "address": 900})
    config["equipment"].append(dead)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = check_online(path)
    assert result.returncode == 1
    rows = table_rows(result.stdout)
    assert rows[("reflow-1", "zone1_top_temp")][-1] == "good"
    assert rows[("reflow-1", "beyond_the_table")][1].startswith("bad")
    assert rows[("reflow-dead", "-")][0] == "FAILED:"
    assert "0 of 2 equipment OK; failed: reflow-1, reflow-dead" in result.stdout
    assert "broker  mqtt://127.0.0.1:1: FAILED: cannot connect" in result.stdout  # nothing listens on port 1
    assert result.stdout.rstrip().endswith("broker: FAILED")
    # pymodbus' own complaint about port 1 is grouped under the machine, not interleaved on stderr.
    assert "pymodbus" not in result.stderr
    assert "reflow-dead: 1 library message(s) during its check\n  warning  pymodbus" in result.stdout


def test_online_check_logs_in_to_the_broker_and_reports_a_refused_login(
    tmp_path: Path, equipment: Equipment
) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gw", "right"], check=True, capture_output=True)
    passwords.chmod(0o600)
    broker = Mosquitto(workdir=tmp_path, extra_config=f"allow_anonymous false\npassword_file {passwords}")
    broker.start()
    try:
        path = gateway_config(tmp_path, broker.url, equipment.port, mqtt={"username": "gw", "password": "right"})
        good = check_online(path)
        assert good.returncode == 0, good.stdout + good.stderr
        assert f"broker  {broker.url}: OK, connected and logged in as gw" in good.stdout
        path = gateway_config(tmp_path, broker.url, equipment.port, mqtt={"username": "gw", "password": "wrong"})
        refused = check_online(path)
        assert refused.returncode == 1
        assert f"broker  {broker.url}: FAILED: refused the login as gw" in refused.stdout
        assert "wrong" not in refused.stdout + refused.stderr
    finally:
        broker.stop()


@pytest.mark.asyncio
async def test_online_check_reads_a_push_adapter_through_its_first_subscription_values() -> None:
    server = PnPServer()
    await server.start()
    try:
        config = OpcUaEquipment.model_validate({
            "id": "pnp-1", "type": "pick_and_place", "adapter": "opcua", "mode": "subscribe",
            "connection": {"url": server.url, "security": {"policy": "None", "mode": "None"}, "timeout": "2s"},
            "publishing_interval": "50ms",
            "signals": [
                {"name": "placed_components", "node": "ns=2;s=PnP.Counters.Placed"},
                {"name": "vacuum", "node": "ns=2;s=PnP.Heads.Head1.Vacuum", "unit": "kPa"},
            ],
        })
        result = await read_equipment(config, 10.0)
    finally:
        await server.stop()
    assert result.ok, result
    assert {r["signal"] for r in result.readings} == {"placed_components", "vacuum"}
    assert all(r["quality"] == "good" for r in result.readings)


@pytest.mark.asyncio
async def test_online_check_of_a_push_adapter_fails_when_the_endpoint_is_unreachable() -> None:
    config = OpcUaEquipment.model_validate({
        "id": "pnp-1", "type": "pick_and_place", "adapter": "opcua", "mode": "subscribe",
        "connection": {"url": "opc.tcp://127.0.0.1:1/none", "security": {"policy": "None", "mode": "None"},
                       "timeout": "1s"},
        "signals": [{"name": "placed_components", "node": "ns=2;s=PnP.Counters.Placed"}],
    })
    result = await read_equipment(config, 5.0)
    assert not result.ok
    assert result.error


def test_online_check_reads_the_virtual_line_through_all_three_protocols(tmp_path: Path, mosquitto: Mosquitto) -> None:
    ports = {"pick_and_place": free_port(), "reflow_oven": free_port(), "aoi": free_port()}
    line = yaml.safe_load((REPO / "config" / "virtual-line.yaml").read_text())
    for machine, port in ports.items():
        line[machine]["port"] = port
    line["ict"]["enabled"] = False  # the tester writes files; this test reads the three protocols
    line_file = tmp_path / "line.yaml"
    line_file.write_text(yaml.safe_dump(line))
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    overrides = {
        "pnp-1": {"url": f"opc.tcp://127.0.0.1:{ports['pick_and_place']}/emsedge/pnp"},
        "reflow-1": {"port": ports["reflow_oven"]},
        "aoi-1": {"port": ports["aoi"]},
    }
    demo["equipment"] = [e for e in demo["equipment"] if e["id"] in overrides]
    for entry in demo["equipment"]:
        entry["connection"] = overrides[entry["id"]]
    demo["mqtt"]["url"] = mosquitto.url
    gateway_file = tmp_path / "demo.yaml"
    gateway_file.write_text(yaml.safe_dump(demo))
    log_path = tmp_path / "simulate.log"
    with log_path.open("wb") as log:
        simulator = subprocess.Popen([EMSEDGE, "simulate", "-c", str(line_file)], stdout=log, stderr=log)
    try:
        wait_until(lambda: b"virtual line up" in log_path.read_bytes(), 60)
        result = check_online(gateway_file)
    finally:
        simulator.terminate()
        simulator.wait(timeout=15)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of 3 equipment OK" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()]
    read = {cells[0] for cells in rows if len(cells) >= 3 and cells[-1] == "good"}
    assert {"pnp-1", "reflow-1"} <= read
