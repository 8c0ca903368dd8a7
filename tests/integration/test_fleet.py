"""`emsedge fleet` against three real gateway daemons on a real mosquitto: all online is exit 0 with every
field in `--json`; a line stopped cleanly (SIGTERM) or killed (SIGKILL, the broker sends its last will)
shows offline with its cause and the exit status is 3. Every status the gateways publish is checked
against the contract (the Subscriber does it). On a NATS JetStream cluster (MQTT 3.1.1 only) the
statuses published to one node are read through wildcards from another."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import Mosquitto, Subscriber, free_port
from support.daemon import Daemon, Equipment, gateway_config
from support.nats_cluster import NatsCluster

SITE = "ems/plant-f"
LINES = ("line-1", "line-2", "line-3")


def fleet(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emsedge.cli", "fleet", "--broker", f"mqtt://127.0.0.1:{port}", "--prefix", SITE,
         *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def latest_status(sub: Subscriber, line: str) -> dict[str, Any] | None:
    statuses = [p for t, p in _with_topics(sub) if t == f"{SITE}/smt/{line}/_gateway/status"]
    return statuses[-1] if statuses else None


def _with_topics(sub: Subscriber) -> list[tuple[str, dict[str, Any]]]:
    with sub.lock:
        items = list(sub.messages)
    return [(t, json.loads(p)) for t, p, _ in items if p]


def wait_status(sub: Subscriber, line: str, predicate: Any, timeout: float = 30.0) -> None:
    sub.wait_for(lambda _: (s := latest_status(sub, line)) is not None and predicate(s), timeout=timeout)


@pytest.fixture
def lines(tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment) -> Iterator[dict[str, Daemon]]:
    daemons: dict[str, Daemon] = {}
    for line in LINES:
        home = tmp_path / line
        home.mkdir()
        config = gateway_config(
            home, mosquitto.url, equipment.port,
            gateway={"id": f"gw-{line}", "site": "plant-f", "area": "smt", "line": line},
            mqtt={"url": mosquitto.url, "keepalive": "2s", "connect_timeout": "2s", "status_interval": "1s",
                  "backoff": {"initial": "100ms", "max": "500ms"}},
        )
        daemons[line] = Daemon(config, home / "gateway.log")
        daemons[line].start()
    yield daemons
    for daemon in daemons.values():
        if daemon.alive():
            daemon.stop()


def test_fleet_shows_every_line_and_exits_non_zero_when_one_is_stopped_or_killed(
    mosquitto: Mosquitto, lines: dict[str, Daemon]
) -> None:
    sub = Subscriber(mosquitto.port, topic=f"{SITE}/+/+/_gateway/status")
    try:
        for line in LINES:  # online, and its machine connected: the refreshed status says so
            wait_status(sub, line, lambda s: s["state"] == "online" and s.get("equipment_connected") == 1,
                        timeout=45)

        everything = fleet(mosquitto.port, "--json", "--expect", "3")
        assert everything.returncode == 0, everything.stdout + everything.stderr
        report = json.loads(everything.stdout)
        assert report["summary"] == {"lines": 3, "online": 3, "offline": 0, "losing_data": 0}
        rows = {row["line"]: row for row in report["lines"]}
        assert set(rows) == {f"smt/{line}" for line in LINES}
        for line in LINES:
            row = rows[f"smt/{line}"]
            assert row["gateway"] == f"gw-{line}" and row["state"] == "online" and row["online"] is True
            assert isinstance(row["version"], str) and row["version"]
            assert isinstance(row["backlog"], int) and isinstance(row["backlog_oldest_age_s"], float)
            assert row["dropped_total"] == 0 and row["losing_data"] is False
            assert (row["equipment_connected"], row["equipment_total"]) == (1, 1)
            assert row["last_seen"].endswith("Z") and row["last_seen_age_s"] < 5

        lines["line-2"].signal(signal.SIGTERM)  # clean stop: the offline status says "stopped"
        wait_status(sub, "line-2", lambda s: s["state"] == "offline")
        assert latest_status(sub, "line-2")["cause"] == "stopped"  # type: ignore[index]
        stopped = fleet(mosquitto.port, "--json", "--expect", "3")
        assert stopped.returncode == 3, stopped.stdout + stopped.stderr
        rows = {row["line"]: row for row in json.loads(stopped.stdout)["lines"]}
        assert (rows["smt/line-2"]["state"], rows["smt/line-2"]["cause"]) == ("offline", "stopped")
        assert rows["smt/line-2"]["online"] is False
        assert rows["smt/line-1"]["online"] and rows["smt/line-3"]["online"]

        lines["line-3"].kill()  # SIGKILL: the broker publishes the last will
        wait_status(sub, "line-3", lambda s: s["state"] == "offline")
        killed = fleet(mosquitto.port, "--expect", "3")
        assert killed.returncode == 3, killed.stdout + killed.stderr
        table = {line.split()[0]: line for line in killed.stdout.splitlines()[1:]}
        assert "offline (connection_lost)" in table["smt/line-3"]
        assert "offline (stopped)" in table["smt/line-2"]
        assert " online " in table["smt/line-1"]
    finally:
        sub.close()


def test_fleet_without_any_gateway_exits_1_and_with_expect_reports_the_missing_lines(mosquitto: Mosquitto) -> None:
    nothing = fleet(mosquitto.port, "--wait", "1s")
    assert nothing.returncode == 1
    assert "no gateway status under ems/plant-f" in nothing.stderr
    missing = fleet(mosquitto.port, "--wait", "1s", "--expect", "2", "--json")
    assert missing.returncode == 3
    assert [row["state"] for row in json.loads(missing.stdout)["lines"]] == ["missing", "missing"]


def test_fleet_reports_an_unreachable_broker_with_exit_1() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emsedge.cli", "fleet", "--broker", f"mqtt://127.0.0.1:{free_port()}",
         "--prefix", SITE], capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_fleet_reads_retained_statuses_from_another_node_of_a_nats_cluster(nats_cluster: NatsCluster) -> None:
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-nats-publisher", protocol=mqtt.MQTTv311)
    publisher.connect("127.0.0.1", nats_cluster.nodes[0].mqtt_port)
    publisher.loop_start()
    try:
        for n, state in ((1, "online"), (2, "online"), (3, "offline")):
            body = {"schema": "emsedge/status@1", "gateway": f"gw-{n}", "state": state,
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "version": "9.9.9",
                    "backlog": 0, "dropped_total": 0, "status_interval_s": 10.0, "equipment_total": 2,
                    "equipment_connected": 2}
            publisher.publish(f"ems/plant-n/smt/line-{n}/_gateway/status", json.dumps(body), qos=1,
                              retain=True).wait_for_publish(20)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    url = nats_cluster.nodes[2].mqtt_url
    refused = subprocess.run([sys.executable, "-m", "emsedge.cli", "fleet", "--broker", url, "--prefix", "ems/plant-n"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "--protocol 3.1.1" in refused.stderr  # NATS refuses MQTT 5 with a hint
    result = subprocess.run(
        [sys.executable, "-m", "emsedge.cli", "fleet", "--broker", url, "--prefix", "ems/plant-n", "--protocol",
         "3.1.1", "--json", "--expect", "3", "--wait", "10s"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    rows = {row["line"]: row["state"] for row in json.loads(result.stdout)["lines"]}
    assert rows == {"smt/line-1": "online", "smt/line-2": "online", "smt/line-3": "offline"}
