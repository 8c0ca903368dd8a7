"""SIGHUP reload of the running daemon: a valid change restarts only the changed equipment and seq
continues without a gap; a broken file leaves the old config running and names file and line."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import Mosquitto, Subscriber, seq_report
from support.daemon import Daemon, Equipment, buffer_seqs, gateway_config, wait_until


@pytest.fixture
def two_machines() -> Iterator[tuple[Equipment, Equipment]]:
    first, second = Equipment(), Equipment()
    first.start()
    second.start()
    yield first, second
    first.stop()
    second.stop()


def two_machine_config(tmp_path: Path, broker_url: str, first: Equipment, second: Equipment) -> Path:
    path = gateway_config(tmp_path, broker_url, first.port)
    config = yaml.safe_load(path.read_text())
    other = json.loads(json.dumps(config["equipment"][0]))
    other["id"] = "reflow-2"
    other["connection"]["port"] = second.port
    config["equipment"].append(other)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    out = []
    for line in daemon.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def connects(daemon: Daemon, equipment_id: str) -> int:
    return sum(1 for e in log_events(daemon) if e.get("event") == "connected" and e.get("equipment") == equipment_id)


def telemetry_count(subscriber: Subscriber, equipment_id: str) -> int:
    return len(subscriber.payloads(f"/{equipment_id}/telemetry"))


def both_deliver(subscriber: Subscriber, n: int) -> bool:
    return telemetry_count(subscriber, "reflow-1") >= n and telemetry_count(subscriber, "reflow-2") >= n


def test_sighup_with_a_valid_change_restarts_only_the_changed_equipment_and_loses_no_seq(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, two_machines: tuple[Equipment, Equipment]
) -> None:
    first, second = two_machines
    path = two_machine_config(tmp_path, mosquitto.url, first, second)
    daemon = Daemon(path, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: both_deliver(subscriber, 5), 60)
        assert (connects(daemon, "reflow-1"), connects(daemon, "reflow-2")) == (1, 1)

        config = yaml.safe_load(path.read_text())
        config["equipment"][1]["poll_interval"] = "80ms"
        config["equipment"][1]["signals"][0]["unit"] = "K"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: any(e.get("event") == "reloaded" for e in log_events(daemon)))
        reloaded = next(e for e in log_events(daemon) if e.get("event") == "reloaded")
        assert reloaded["changed"] == ["reflow-2"]
        assert reloaded["added"] == reloaded["removed"] == []
        wait_until(lambda: connects(daemon, "reflow-2") == 2)
        wait_until(lambda: any(r["unit"] == "K" for p in subscriber.payloads("/reflow-2/telemetry")
                               for r in p["readings"] if r["signal"] == "zone1_top_temp"))
        before = telemetry_count(subscriber, "reflow-1")
        wait_until(lambda: telemetry_count(subscriber, "reflow-1") >= before + 5)
        assert connects(daemon, "reflow-1") == 1  # never reconnected: kept running through the reload
        restored = [p for p in subscriber.payloads("/reflow-1/events") if p["event"]["type"] == "connection_restored"]
        assert len(restored) == 1
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    subscriber.sync()  # everything the broker accepted has arrived
    last, waiting = buffer_seqs(tmp_path / "buffer.db")
    unique, duplicates, missing = seq_report(subscriber.payloads(), first=1, last=last, accounted=waiting)
    assert unique
    assert missing == []  # from seq 1 to the last one the gateway assigned
    assert duplicates == 0


def test_sighup_with_a_broken_file_keeps_the_old_config_and_logs_file_and_line(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, two_machines: tuple[Equipment, Equipment]
) -> None:
    first, second = two_machines
    path = two_machine_config(tmp_path, mosquitto.url, first, second)
    daemon = Daemon(path, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: both_deliver(subscriber, 3), 60)
        text = path.read_text()
        path.write_text(text.replace("poll_interval: 50ms", "poll_intervall: 50ms", 1))
        broken_line = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "poll_intervall" in line)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: any("reload refused" in str(e.get("event")) for e in log_events(daemon)))
        refused = [e for e in log_events(daemon) if "reload refused" in str(e.get("event"))]
        problems = " ".join(str(e.get("problem")) for e in refused)
        assert f"{path}:{broken_line}:" in problems
        assert "poll_intervall" in problems
        counts = telemetry_count(subscriber, "reflow-1"), telemetry_count(subscriber, "reflow-2")
        wait_until(lambda: telemetry_count(subscriber, "reflow-1") >= counts[0] + 5
                   and telemetry_count(subscriber, "reflow-2") >= counts[1] + 5)
        assert (connects(daemon, "reflow-1"), connects(daemon, "reflow-2")) == (1, 1)
        assert not any(e.get("event") == "reloaded" for e in log_events(daemon))
        assert daemon.alive()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
