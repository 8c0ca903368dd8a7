"""The running daemon seen from outside: /healthz and /metrics while equipment goes down and up, and
sd_notify messages on a fake systemd notify socket (READY, STATUS, WATCHDOG, STOPPING)."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import Mosquitto, free_port
from support.daemon import Daemon, Equipment, gateway_config, wait_until


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def healthz(port: int) -> dict[str, Any]:
    code, body = get(f"http://127.0.0.1:{port}/healthz")
    assert code in (200, 503)
    return dict(json.loads(body))


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def answers(port: int) -> bool:
    try:
        healthz(port)
    except OSError:
        return False
    return True


REFLOW = (("equipment", "reflow-1"),)


def test_healthz_and_metrics_follow_equipment_going_down_and_coming_back(
    tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment
) -> None:
    port = free_port()
    config = gateway_config(tmp_path, mosquitto.url, equipment.port, http={"listen": f"127.0.0.1:{port}"})
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: answers(port) and healthz(port)["equipment"]["reflow-1"]["last_good_read"], 60)
        up = healthz(port)
        assert up["status"] == "ok"
        assert up["gateway"] == "test-gw"
        assert up["broker"]["connected"] is True
        assert up["equipment"]["reflow-1"]["connected"] is True
        assert up["equipment"]["reflow-1"]["last_good_read"].endswith("Z")
        wait_until(lambda: metrics(port)[("emsedge_publish_latency_seconds_count", ())] >= 5)
        wait_until(lambda: metrics(port)[("emsedge_polls_total", REFLOW)] >= 5)
        m = metrics(port)
        assert m[("emsedge_polls_total", REFLOW)] >= 5
        assert m[("emsedge_values_collected_total", REFLOW)] >= 15
        assert m[("emsedge_poll_duration_seconds_count", REFLOW)] >= 5
        assert m[("emsedge_equipment_connected", REFLOW)] == 1
        assert m[("emsedge_broker_connected", ())] == 1
        assert m[("emsedge_publish_latency_seconds_count", ())] >= 5
        assert ("emsedge_backlog_messages", ()) in m

        equipment.stop()
        wait_until(lambda: healthz(port)["equipment"]["reflow-1"]["connected"] is False)
        down = healthz(port)
        assert down["status"] == "degraded"
        assert down["equipment"]["reflow-1"]["last_error"]
        assert down["equipment"]["reflow-1"]["last_good_read"] >= up["equipment"]["reflow-1"]["last_good_read"]
        assert metrics(port)[("emsedge_equipment_connected", REFLOW)] == 0

        equipment.start()
        wait_until(lambda: healthz(port)["status"] == "ok", 60)
        back = metrics(port)
        assert back[("emsedge_equipment_connected", REFLOW)] == 1
        assert back[("emsedge_reconnects_total", REFLOW)] >= 1
        assert healthz(port)["equipment"]["reflow-1"]["reconnects"] >= 1
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_http_listen_null_turns_the_listener_off(tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment) -> None:
    port = free_port()
    daemon = Daemon(gateway_config(tmp_path, mosquitto.url, equipment.port), tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: '"event": "running"' in daemon.log(), 60)
        assert not answers(port)
        assert "http listening" not in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


class FakeNotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.received

    def close(self) -> None:
        self.sock.close()


def test_daemon_notifies_ready_status_watchdog_and_stopping_on_a_notify_socket(
    tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment
) -> None:
    fake = FakeNotifySocket(tmp_path / "notify.sock")
    daemon = Daemon(
        gateway_config(tmp_path, mosquitto.url, equipment.port),
        tmp_path / "daemon.log",
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"},  # ping every 0.2 s
    )
    daemon.start()
    try:
        wait_until(lambda: any(m.startswith("READY=1") for m in fake.drain()), 60)
        wait_until(lambda: sum(m == "WATCHDOG=1" for m in fake.drain()) >= 3, 20)
        wait_until(lambda: any(m.startswith("STATUS=1 equipment, 1 connected, backlog") for m in fake.drain()), 20)
        assert daemon.process is not None
        pid = daemon.process.pid
        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=20) == 0
        daemon.process = None
        got = fake.drain()
    finally:
        daemon.kill()
        fake.close()
    ready = next(m for m in got if m.startswith("READY=1"))
    assert f"MAINPID={pid}" in ready
    stopping = [i for i, m in enumerate(got) if m.startswith("STOPPING=1")]
    assert len(stopping) == 1
    assert got.index(ready) < stopping[0]
    assert "WATCHDOG=1" in got[: stopping[0]]
