"""End to end: `emsedge simulate` (the virtual line) -> `emsedge run -c config/demo.yaml` -> mosquitto -> MES.

The line runs with compressed cycle times, a fixed seed, six boards and a fault schedule (a jam, an AOI
alarm, an oven alarm bit, an oven outage). Its `--events` log is the ground truth the reference MES
subscriber (examples/mes_subscriber.py) is compared with.

Deterministic on a busy machine: the line listens on free ports (the gateway reads config/demo.yaml
pointed at them), its clock starts only once MES has seen every machine connected (`--hold`, SIGUSR1),
and every wait is on observable state with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, Mosquitto, Subscriber, contract_violation, free_port
from support.daemon import EMSEDGE, Daemon, buffer_seqs, wait_until

from emsedge.config import load_config
from emsedge.simulate import VirtualLineConfig, load_virtual_line
from emsedge.simulate.config import point_gateway_config

sys.path.insert(0, str(REPO / "examples"))
from mes_subscriber import MesSubscriber, connect

PREFIX = "ems/demo-plant/smt/virtual-line"
BOARDS = 6


def fast_line(tmp_path: Path, faults: list[dict[str, Any]] | None = None) -> tuple[Path, VirtualLineConfig]:
    """The demo line on free ports with test-sized cycle times and a fault schedule, as a config file."""
    ports = load_virtual_line(REPO / "config" / "virtual-line.yaml").with_free_ports()
    config = {
        "line": {"speed": 1, "tick": "50ms", "seed": 7, "first_serial": 501, "board_interval": "1s",
                 "max_boards": BOARDS},
        "pick_and_place": {"port": ports.pick_and_place.port, "setup_time": "3.5s", "transfer_time": "100ms",
                           "placement_time": "900ms", "pick_error_rate": 0.01},
        "reflow_oven": {"port": ports.reflow_oven.port, "dwell_time": "2s", "min_spacing": "300ms"},
        "aoi": {"port": ports.aoi.port, "inspection_time": "300ms", "defect_rate": 0.4},
        # the gateway runs in tmp_path, where config/demo.yaml's ./var/ict-1/out is this folder
        "ict": {"folder": str(tmp_path / "var" / "ict-1" / "out"), "test_time": "200ms", "fail_rate": 0.5},
        "schedule": {"faults": faults if faults is not None else [
            {"at": "4.8s", "machine": "pick_and_place", "fault": "jam", "duration": "800ms"},
            {"at": "7s", "machine": "aoi", "fault": "alarm", "code": 7, "duration": "1s"},
            {"at": "8s", "machine": "reflow_oven", "fault": "alarm", "code": 3, "duration": "1s"},
            {"at": "9.5s", "machine": "reflow_oven", "fault": "outage", "duration": "300ms"},
        ]},
    }
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, load_virtual_line(path)


class Simulator:
    """`emsedge simulate --hold`: servers up at once, the line's clock starts at `release()`."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.events = tmp_path / "line-events.jsonl"
        self.log_path = tmp_path / "simulate.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [EMSEDGE, "simulate", "-c", str(config), "--hold", "--events", str(self.events)],
            stdout=self.log, stderr=self.log)

    def up(self) -> bool:
        return b"virtual line up" in self.log_path.read_bytes()

    def release(self) -> None:
        self.process.send_signal(signal.SIGUSR1)
        wait_until(lambda: b"line clock started" in self.log_path.read_bytes(), 30)

    def truth(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]

    def inspected(self) -> list[dict[str, Any]]:
        return [e["board"] for e in self.truth() if e["kind"] == "board_inspected"]

    def tested(self) -> list[dict[str, Any]]:
        return [e["board"] for e in self.truth() if e["kind"] == "board_tested"]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()


def line_and_gateway(tmp_path: Path, mosquitto: Mosquitto,
                     faults: list[dict[str, Any]] | None = None) -> tuple[Simulator, Daemon]:
    """The line on free ports (held), and config/demo.yaml pointed at it, run in tmp_path (not started)."""
    line_file, line = fast_line(tmp_path, faults)
    simulator = Simulator(line_file, tmp_path)
    gateway_file = tmp_path / "gateway.yaml"
    env = {**point_gateway_config(REPO / "config" / "demo.yaml", line, gateway_file),
           "EMSEDGE_MQTT__URL": mosquitto.url, "EMSEDGE_BUFFER__PATH": str(tmp_path / "buffer.db"),
           "EMSEDGE_LOGGING__FORMAT": "json", "PATH": os.environ.get("PATH", ""),
           "EMSEDGE_HTTP__LISTEN": f"127.0.0.1:{free_port()}"}  # demo.yaml's 9108 may be taken
    return simulator, Daemon(gateway_file, tmp_path / "gateway.log", env=env, cwd=tmp_path)


def start_in_step(simulator: Simulator, gateway: Daemon, mes: MesSubscriber) -> None:
    """Start the gateway once the line is up, and the line's clock once MES has seen every machine connected.

    The first board and the first states only reach MES if every machine is connected before the line's
    clock starts (the OPC UA state is read at subscribe, but an HSMS report is sent once).
    """
    wait_until(simulator.up, 60)
    gateway.start()
    wait_until(lambda: {c["equipment"] for c in mes.connections if c["type"] == "connection_restored"}
               >= {"pnp-1", "reflow-1", "aoi-1"}, 60)
    simulator.release()


@pytest.fixture
def mes(mosquitto: Mosquitto) -> Iterator[MesSubscriber]:
    """The reference MES subscriber; every message it receives is also validated against the contract."""
    sub = MesSubscriber(incomplete_after=0.0)
    violations: list[str] = []
    handle = sub.handle

    def checked(topic: str, payload: bytes) -> None:
        if (violation := contract_violation(topic, payload)) is not None:
            violations.append(violation)
        handle(topic, payload)

    sub.handle = checked  # type: ignore[method-assign]
    client = connect(sub, mosquitto.url, PREFIX)
    yield sub
    client.loop_stop()
    client.disconnect()
    assert not violations, f"{len(violations)} message(s) break the contract: {violations[:3]}"


def assert_gateway_reaches_line(gateway_file: Path, line: VirtualLineConfig) -> None:
    gateway = {e.id: e for e in load_config(gateway_file).equipment}
    assert gateway["pnp-1"].connection.url == f"opc.tcp://127.0.0.1:{line.pick_and_place.port}/emsedge/pnp"  # type: ignore[union-attr]
    assert gateway["reflow-1"].connection.port == line.reflow_oven.port  # type: ignore[union-attr]
    assert gateway["aoi-1"].connection.port == line.aoi.port  # type: ignore[union-attr]


def test_demo_config_and_virtual_line_agree_on_every_port() -> None:
    assert_gateway_reaches_line(REPO / "config" / "demo.yaml", load_virtual_line(REPO / "config" / "virtual-line.yaml"))


def test_the_demo_config_pointed_at_a_line_on_other_ports_reaches_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    line = load_virtual_line(REPO / "config" / "virtual-line.yaml").with_port_base(30100)
    assert (line.pick_and_place.port, line.reflow_oven.port, line.aoi.port) == (30100, 30101, 30102)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = point_gateway_config(REPO / "config" / "demo.yaml", line, elsewhere / "gateway.yaml")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_gateway_reaches_line(elsewhere / "gateway.yaml", line)
    original = {e.id: e for e in load_config(REPO / "config" / "demo.yaml").equipment}
    moved = {e.id: e for e in load_config(elsewhere / "gateway.yaml").equipment}
    assert moved.keys() == original.keys()
    for i, e in moved.items():  # only the connection moved
        assert e.model_dump(exclude={"connection"}) == original[i].model_dump(exclude={"connection"})


@pytest.mark.timeout(600)  # the line, the gateway and MES as processes: minutes on a loaded machine
def test_every_board_leaving_the_line_reaches_mes_with_placement_reflow_and_inspection_joined_by_serial(
    tmp_path: Path, mosquitto: Mosquitto, mes: MesSubscriber
) -> None:
    simulator, gateway = line_and_gateway(tmp_path, mosquitto)
    started = time.time()
    try:
        start_in_step(simulator, gateway, mes)
        wait_until(lambda: len(simulator.inspected()) >= BOARDS, 90)
        wait_until(lambda: len(mes.inspected_serials()) >= BOARDS, 60)
        wait_until(lambda: len(simulator.tested()) >= BOARDS, 60)
        wait_until(lambda: len(mes.tested_serials()) >= BOARDS
                   and all(len(mes.boards[b["serial"]]["test"]["runs"]) == len(b["test_results"])
                           for b in simulator.tested()), 60)
        wait_until(lambda: sum(c["type"] == "connection_restored" and c["equipment"] == "reflow-1"
                               for c in mes.connections) >= 2, 60)
        assert gateway.stop() == 0
    finally:
        gateway.kill()
        simulator_status = simulator.stop()
    assert simulator_status == 0
    ended = time.time()

    truth = simulator.inspected()
    assert [b["serial"] for b in truth] == [f"PCB-2026-{n:06d}" for n in range(501, 501 + BOARDS)]
    for board in truth:
        record = mes.boards.get(board["serial"])
        assert record is not None, f"{board['serial']} never reached MES"
        assert MesSubscriber.is_complete(record), f"{board['serial']} incomplete: {sorted(record)}"
        placement, reflow, inspection = record["placement"], record["reflow"], record["inspection"]
        # Traceability down to the component: every slot's reel, part number and reference designators.
        assert placement["equipment"] == "pnp-1"
        assert placement["program"] == "MAIN-CTRL-REV-C"
        assert {str(m["slot"]): {k: m[k] for k in ("reel_id", "part_number", "ref_designators")}
                for m in placement["materials"]} == board["materials"]
        # The zone profile the board saw, from the oven's registers at the moment it left.
        assert reflow["equipment"] == "reflow-1"
        assert reflow["profile"]["recipe"] == "SAC305-STD"
        for zone in range(1, 11):
            for side in ("top", "bottom"):
                assert 90 < reflow["profile"][f"zone{zone}_{side}_actual"] < 270
                assert reflow["units"][f"zone{zone}_{side}_actual"] == "Cel"
        assert reflow["profile"]["conveyor_speed"] == pytest.approx(80.0)
        # The inspection verdict and defects exactly as the AOI decided them.
        assert inspection["equipment"] == "aoi-1"
        assert inspection["result"] == board["result"].lower()
        assert inspection["defects"] == board["defects"]
        # Each `ts` comes from a different clock (OPC UA source timestamp, the Modbus poll, the HSMS
        # report), so they are not compared with each other; each lies within the run.
        for stage in (placement, reflow, inspection):
            assert started - 1 <= datetime.fromisoformat(stage["ts"]).timestamp() <= ended + 1, stage["ts"]
    # Within one clock the boards keep their order: the line is a conveyor.
    for stage in ("placement", "reflow", "inspection"):
        stamps = [mes.boards[b["serial"]][stage]["ts"] for b in truth]
        assert stamps == sorted(stamps), (stage, stamps)
    assert any(b["result"] == "FAIL" for b in truth)
    assert any(b["result"] == "PASS" for b in truth)
    # The in-circuit test after the AOI: every run of every board, in order, from the tester's files.
    tested = simulator.tested()
    assert sorted(b["serial"] for b in tested) == sorted(b["serial"] for b in truth)
    for board in tested:
        record = mes.boards[board["serial"]]
        assert MesSubscriber.is_complete(record, test=True)
        runs = record["test"]["runs"]
        assert [r["result"] for r in runs] == [v.lower() for v in board["test_results"]]
        for run in runs:
            assert run["equipment"] == "ict-1" and run["test_method"] == "ict"
            assert run["measurements"] == 11  # 8 parts + the shorts block (shorts, opens, phantoms)
            assert (run["failed_tests"] != []) == (run["result"] == "fail")
            assert run["started"].endswith("Z") and run["started"] < run["ended"]
    assert any(r == "FAIL" for b in tested for r in b["test_results"])
    # Every file archived once its events were durable; nothing left behind, nothing rejected.
    folder = tmp_path / "var" / "ict-1"
    assert len(list((folder / "done").glob("*.log"))) == sum(len(b["test_results"]) for b in tested)
    assert not list((folder / "out").glob("*.log")) and not (folder / "error").exists()

    # Every seq the gateway assigned reached MES, from the first to the last (or is still buffered).
    last, waiting = buffer_seqs(tmp_path / "buffer.db")
    assert mes.gaps() == {}
    (seqs,) = mes.seqs.values()
    assert seqs.first == 1
    assert [s for s in range(seqs.highest + 1, last + 1) if s not in waiting] == []
    assert mes.received > 100

    pnp_states = [c["state_name"] for c in mes.state_changes if c["equipment"] == "pnp-1"]
    assert pnp_states[:4] == ["setup", "productive", "unscheduled_down", "productive"]
    assert pnp_states[-1] == "starved"  # the loader stopped after the last board

    def faults(equipment: str) -> list[tuple[str, Any, str]]:
        return [(f["type"], f.get("fault_code", f.get("alid")), f["fault_occurrence_id"])
                for f in mes.faults if f["equipment"] == equipment]

    for equipment, code in (("pnp-1", "1201"), ("aoi-1", "7"), ("reflow-1", "REFLOW-3")):
        got = faults(equipment)
        assert [(kind, c) for kind, c, _ in got] == [("fault_occurred", code), ("fault_cleared", code)], got
        assert got[0][2] == got[1][2]  # linked by the fault occurrence id
    assert not mes.active_faults

    reflow = [c["type"] for c in mes.connections if c["equipment"] == "reflow-1"]
    assert "connection_lost" in reflow
    assert reflow[-1] == "connection_restored"


@pytest.mark.timeout(600)  # the line, the gateway and MES as processes: minutes on a loaded machine
def test_boards_leaving_the_oven_during_an_outage_are_announced_as_units_missed_and_reported_incomplete(
    tmp_path: Path, mosquitto: Mosquitto, mes: MesSubscriber
) -> None:
    # The oven is unreachable long enough for several boards to leave it unseen.
    outage = [{"at": "6s", "machine": "reflow_oven", "fault": "outage", "duration": "3s"}]
    simulator, gateway = line_and_gateway(tmp_path, mosquitto, outage)
    try:
        start_in_step(simulator, gateway, mes)
        wait_until(lambda: len(simulator.inspected()) >= BOARDS, 90)
        wait_until(lambda: len(mes.inspected_serials()) >= BOARDS, 60)
        wait_until(lambda: bool(mes.units_missed), 60)
        assert gateway.stop() == 0
    finally:
        gateway.kill()
        simulator_status = simulator.stop()
    assert simulator_status == 0

    truth = simulator.truth()
    start = next(e["at"] for e in truth if e["kind"] == "outage_start")
    exits = [(e["at"], e["board"]["serial"]) for e in truth if e["kind"] == "board_exit"]
    missed = [m for m in mes.units_missed if m["equipment"] == "reflow-1"]
    assert len(missed) == 1, missed
    announced = missed[0]
    assert announced["emit"] == "unit_processed"
    # The boards between the last one seen before the gap and the first one seen after it left the oven
    # while the gateway could not see it (the outage and the reconnect backoff) ...
    serials = [serial for _, serial in exits]
    last = announced["last_serial"]  # null when no board had left before the gap
    before = serials.index(last) if last is not None else -1
    after = serials.index(announced["next_serial"])
    hidden = serials[before + 1:after]
    assert hidden, "the outage must hide at least one board"
    assert all(at >= start for at, serial in exits if serial in hidden)
    assert announced["count"] == len(hidden)
    assert announced["counter_to"] - announced["counter_from"] == len(hidden) + 1
    # ... and exactly those have no reflow record at MES.
    without_reflow = sorted(s for s, b in mes.boards.items() if "reflow" not in b)
    assert without_reflow == hidden

    # MES reports the incomplete boards separately from the complete ones, with the announcement.
    reports = {r["serial"]: r for r in mes.check_incomplete()}
    assert sorted(s for s, r in reports.items() if "reflow" in r["missing"]) == hidden
    for serial in hidden:
        assert "placement" in reports[serial]["seen"] and "inspection" in reports[serial]["seen"]
        assert [m["equipment"] for m in reports[serial]["units_missed"]] == ["reflow-1"]
    assert not set(mes.completed) & set(hidden)

    # A subscriber joining now learns each machine's current state from the retained state topics.
    late = Subscriber(mosquitto.port, topic=f"{PREFIX}/+/state")
    try:
        late.wait_for(lambda got: {p.get("equipment") for p in got} >= {"pnp-1", "reflow-1", "aoi-1"}, 10)
        retained = {json.loads(payload)["equipment"]: json.loads(payload)
                    for _topic, payload, flag in late.messages if flag and payload}
    finally:
        late.close()
    last_inspected = simulator.inspected()[-1]["serial"]
    assert retained["aoi-1"]["last_board"]["serial"] == last_inspected
    assert retained["reflow-1"]["last_board"]["event"] == "unit_processed"
    assert retained["pnp-1"]["station_state_name"] == "starved"  # the loader stopped after the last board
