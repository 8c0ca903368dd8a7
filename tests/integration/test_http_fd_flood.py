"""The connection flood of issue 12 at full size: 4,196 idle TCP connections to the health port of a
gateway held to the shipped unit's `LimitNOFILE=4096` (set with `prlimit` on the running daemon).

With the default `max_connections` extra connections are closed at once, so the flood never exhausts the
file limit; the gateway stays up, keeps publishing, and /healthz answers normally within a second of the
flood ending. (EMFILE itself, reached with a limit lowered to 256 and `max_connections` above it, is
`test_status_page_load.py`'s case: at full size the idle timeout closes the first connections before a
flood paced by the listen backlog can hold 4,096 of them.)
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from support import Mosquitto, Subscriber, free_port, wait_for_port
from support.daemon import Daemon, Equipment, gateway_config, wait_until
from test_status_page_load import healthz_time, telemetry_count

UNIT_NOFILE = 4096
FLOOD = UNIT_NOFILE + 100


def _unit_nofile() -> int:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "emsedge.service"
    found = re.search(r"^LimitNOFILE=(\d+)$", unit.read_text(), re.MULTILINE)
    assert found, "the shipped unit states LimitNOFILE"
    return int(found.group(1))


def _healthy_within(port: int, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            healthz_time(port)
            return time.monotonic() - started
        except (OSError, AssertionError):
            time.sleep(0.01)
    raise AssertionError(f"/healthz did not answer within {limit} s")


def test_4196_idle_connections_under_the_units_file_limit_then_normal_service_within_a_second(
    tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment
) -> None:
    assert _unit_nofile() == UNIT_NOFILE
    http_port = free_port()
    config = gateway_config(tmp_path, mosquitto.url, equipment.port, http={
        "listen": f"127.0.0.1:{http_port}",  # the default max_connections, as shipped
    })
    daemon = Daemon(config, tmp_path / "gateway.log")
    subscriber = Subscriber(mosquitto.port)
    flood: list[socket.socket] = []
    try:
        daemon.start()
        wait_for_port(http_port, timeout=30)
        wait_until(lambda: telemetry_count(subscriber) > 5, 30)
        assert daemon.process is not None
        subprocess.run(["prlimit", f"--pid={daemon.process.pid}", f"--nofile={UNIT_NOFILE}:{UNIT_NOFILE}"],
                       check=True)
        for _ in range(FLOOD):
            try:
                flood.append(socket.create_connection(("127.0.0.1", http_port), timeout=2))
            except OSError:
                break  # the listen backlog is full: the flood is as large as the kernel lets it be
        assert len(flood) >= UNIT_NOFILE - 200, len(flood)
        assert daemon.alive()
        for s in flood:
            s.close()
        flood.clear()
        assert _healthy_within(http_port, 1.0) < 1.0
        assert daemon.alive()
        count = telemetry_count(subscriber)
        wait_until(lambda: telemetry_count(subscriber) > count + 5, 10)  # still publishing
        log = daemon.log()
        assert log.count("out of system resource") + log.count("Too many open files") <= 2  # once, not per retry
        assert "Traceback" not in log
    finally:
        for s in flood:
            s.close()
        subscriber.close()
        if daemon.alive():
            daemon.stop()
