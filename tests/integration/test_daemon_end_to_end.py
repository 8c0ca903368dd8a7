"""`emsedge run` as a subprocess: Modbus equipment -> gateway -> real mosquitto -> subscriber."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import Mosquitto, Subscriber
from support.daemon import EMSEDGE, Daemon, Equipment, gateway_config, wait_until

from emsedge.schema import EventMessage, StatusMessage, TelemetryMessage

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_daemon_delivers_typed_values_with_envelope_and_increasing_seq(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, equipment: Equipment
) -> None:
    daemon = Daemon(gateway_config(tmp_path, mosquitto.url, equipment.port), tmp_path / "daemon.log")
    daemon.start()
    try:
        got = subscriber.wait_for(lambda ps: len(ps) >= 10, suffix="/reflow-1/telemetry")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    messages = [TelemetryMessage.model_validate(p) for p in got]
    seqs = [m.seq for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    first = messages[0]
    assert first.gateway == "test-gw" and first.equipment == "reflow-1" and first.equipment_type == "reflow_oven"
    assert TS.match(first.ts)
    values = {r.signal: (r.value, r.unit, r.quality) for r in first.readings}
    assert values["zone1_top_temp"] == (215.5, "Cel", "good")
    assert values["conveyor_speed"][0] == pytest.approx(72.5) and values["conveyor_speed"][1] == "cm/min"
    assert values["board_count"] == (123456, None, "good")
    events = [EventMessage.model_validate(p) for p in subscriber.payloads("/reflow-1/events")]
    assert events and events[0].event.type == "connection_restored"
    status = [StatusMessage.model_validate(p) for p in subscriber.payloads("/_gateway/status")]
    assert status[0].state == "online" and status[0].version


def test_equipment_going_away_gives_bad_quality_and_connection_events(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, equipment: Equipment
) -> None:
    daemon = Daemon(gateway_config(tmp_path, mosquitto.url, equipment.port), tmp_path / "daemon.log")
    daemon.start()
    try:
        subscriber.wait_for(lambda ps: len(ps) >= 3, suffix="/reflow-1/telemetry")
        equipment.stop()
        subscriber.wait_for(
            lambda ps: any(p["event"]["type"] == "connection_lost" for p in ps), suffix="/reflow-1/events"
        )
        bad = subscriber.wait_for(
            lambda ps: any(all(r["quality"] == "bad" for r in p["readings"]) for p in ps), suffix="/telemetry"
        )
        assert any(r["value"] is None for p in bad for r in p["readings"] if r["quality"] == "bad")
        equipment.start()
        wait_until(lambda: sum(
            p["event"]["type"] == "connection_restored" for p in subscriber.payloads("/reflow-1/events")) >= 2, 20)
        assert daemon.alive()
    finally:
        daemon.kill()


def test_bad_config_exits_78_naming_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw, site: s, line: l}\nmqtt: {url: 'mqtt://127.0.0.1:1', qso: 1}\n")
    result = subprocess.run([EMSEDGE, "run", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert f"{bad}:2:" in result.stderr and "mqtt.qso" in result.stderr and "did you mean 'qos'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_prints_a_summary_for_a_valid_file() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "example.yaml"
    result = subprocess.run([sys.executable, "-m", "emsedge.cli", "check-config", str(example)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "reflow-1" in result.stdout and "3 signals" in result.stdout


def test_missing_tls_file_exits_78_before_connecting(tmp_path: Path) -> None:
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(
        "gateway: {id: gw, site: s, line: l}\n"
        f"mqtt: {{url: 'mqtts://127.0.0.1:8883', tls: {{ca_file: {tmp_path / 'missing-ca.pem'}}}}}\n"
        f"buffer: {{path: {tmp_path / 'b.db'}}}\nhttp: {{listen: null}}\n"
    )
    result = subprocess.run([EMSEDGE, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 78, result.stderr
    assert "missing-ca.pem" in result.stderr and "Traceback" not in result.stderr
