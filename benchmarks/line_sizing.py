"""Sizing per line for docs/scale-out.md: what one line puts on the broker, and how long its buffer lasts.

The line: the virtual SMT line (`emsedge simulate`, config/virtual-line.yaml on free ports: OPC UA
pick-and-place, Modbus reflow oven, SECS/GEM AOI, an ICT writing result files) and one gateway
(`emsedge run`, config/demo.yaml pointed at the line, `buffer.sync: full` like production), publishing to a
real mosquitto. One subscriber on `{prefix}/#` counts messages and bytes for `--window` seconds after a
warm-up. Then the broker is stopped for `--outage` seconds and the gateway's buffer growth is read from its
/healthz (the bytes `buffer.max_bytes` caps) and from the size of its files on disk.

Prints: messages/s and payload bytes/s per kind (telemetry, events, state, status), the MQTT PUBLISH bytes
the gateway sends (payload + topic + header, no TCP/IP), gateway CPU and RSS, buffer bytes per message and
buffer hours per GiB of `buffer.max_bytes` (what the cap counts: payload, topic, id and 32 bytes per row).

Run: `.venv/bin/python benchmarks/line_sizing.py [--speed 1] [--window 60] [--outage 30]`. About two
minutes. `--speed 20` is the demo's busy line (a board every 1.2 s instead of every 24 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from pipeline import proc_cpu, proc_mem_mb  # noqa: E402
from support import Mosquitto, free_port  # noqa: E402

from emsedge.simulate import load_virtual_line  # noqa: E402
from emsedge.simulate.config import point_gateway_config  # noqa: E402

EMSEDGE = str(Path(sys.executable).with_name("emsedge"))
PREFIX = "ems/demo-plant/smt/virtual-line"
GIB = 1024**3


def publish_wire_bytes(topic: str, payload: int) -> int:
    """Bytes of one MQTT 5 QoS 1 PUBLISH: fixed header, topic, packet id, empty properties, payload."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + varint + remaining


class Counter_:
    """A paho subscriber on `{prefix}/#` counting messages and bytes per kind while `counting` is set."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self.lock = threading.Lock()
        self.counting = False
        self.messages: Counter[str] = Counter()
        self.payload: Counter[str] = Counter()
        self.wire: Counter[str] = Counter()
        self.connected_equipment: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sizing-{os.getpid()}")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind == "state" and msg.payload:
            state = json.loads(msg.payload)
            if state.get("connection") == "connected":
                self.connected_equipment.add(state["equipment"])
        with self.lock:
            if self.counting and not msg.retain:
                self.messages[kind] += 1
                self.payload[kind] += len(msg.payload)
                self.wire[kind] += publish_wire_bytes(msg.topic, len(msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def files_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"line_sizing: {what} not reached within {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="line speed factor (config/virtual-line.yaml: 20)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds to count (default 60)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds with the broker down (default 30)")
    parser.add_argument("--telemetry-format", choices=["full", "compact"], default=None,
                        help="mqtt.telemetry_format of the gateway (default: the config's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="line-sizing-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(workdir=tmp)
        broker.start()
        line = load_virtual_line(REPO / "config" / "virtual-line.yaml").with_free_ports()
        raw = yaml.safe_load((REPO / "config" / "virtual-line.yaml").read_text())
        raw["line"]["speed"] = args.speed
        raw["pick_and_place"]["port"] = line.pick_and_place.port
        raw["reflow_oven"]["port"] = line.reflow_oven.port
        raw["aoi"]["port"] = line.aoi.port
        raw.setdefault("ict", {})["folder"] = str(tmp / "var" / "ict-1" / "out")
        line_file = tmp / "line.yaml"
        line_file.write_text(yaml.safe_dump(raw))
        line = load_virtual_line(line_file)
        gateway_file = tmp / "gateway.yaml"
        http_port = free_port()
        buffer_path = tmp / "buffer.db"
        env = {**os.environ, **point_gateway_config(REPO / "config" / "demo.yaml", line, gateway_file),
               "EMSEDGE_MQTT__URL": broker.url, "EMSEDGE_BUFFER__PATH": str(buffer_path),
               "EMSEDGE_BUFFER__SYNC": "full", "EMSEDGE_HTTP__LISTEN": f"127.0.0.1:{http_port}",
               "EMSEDGE_LOGGING__FORMAT": "json"}
        if args.telemetry_format is not None:
            env["EMSEDGE_MQTT__TELEMETRY_FORMAT"] = args.telemetry_format
        logs = open(tmp / "processes.log", "wb")  # noqa: SIM115 - closed below
        simulator = subprocess.Popen([EMSEDGE, "simulate", "-c", str(line_file)], stdout=logs, stderr=logs)
        counter = Counter_(broker.port)
        gateway = subprocess.Popen([EMSEDGE, "run", "-c", str(gateway_file)], stdout=logs, stderr=logs, env=env,
                                   cwd=tmp)
        try:
            wait(lambda: {"pnp-1", "reflow-1", "aoi-1"} <= counter.connected_equipment, 90, "every machine connected")
            time.sleep(10)  # warm-up: first reads, retained states, the line filling
            cpu0, t0 = proc_cpu(gateway.pid), time.monotonic()
            with counter.lock:
                counter.counting = True
            time.sleep(args.window)
            with counter.lock:
                counter.counting = False
                messages, payload, wire = dict(counter.messages), dict(counter.payload), dict(counter.wire)
            elapsed = time.monotonic() - t0
            cpu = (proc_cpu(gateway.pid) - cpu0) / elapsed
            rss, peak = proc_mem_mb(gateway.pid, "VmRSS"), proc_mem_mb(gateway.pid, "VmHWM")

            before = healthz(http_port)["buffer"]
            broker.stop()
            o0 = time.monotonic()
            time.sleep(args.outage)
            after, disk1 = healthz(http_port)["buffer"], files_bytes(buffer_path)
            outage = time.monotonic() - o0
        finally:
            gateway.send_signal(signal.SIGTERM)
            simulator.send_signal(signal.SIGTERM)
            for process in (gateway, simulator):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            counter.close()
            broker.stop()
            logs.close()

    total_messages, total_payload, total_wire = sum(messages.values()), sum(payload.values()), sum(wire.values())
    print(f"virtual line, speed {args.speed:g}, {elapsed:.0f} s window, buffer.sync full, "
          f"telemetry {args.telemetry_format or 'as configured'}")
    print(f"{'kind':<10} {'msg/s':>8} {'payload B/s':>12} {'B/msg':>7}")
    for kind in sorted(messages):
        n = messages[kind]
        print(f"{kind:<10} {n / elapsed:>8.2f} {payload[kind] / elapsed:>12.0f} {payload[kind] / max(n, 1):>7.0f}")
    print(f"{'total':<10} {total_messages / elapsed:>8.2f} {total_payload / elapsed:>12.0f} "
          f"{total_payload / max(total_messages, 1):>7.0f}")
    print(f"MQTT PUBLISH bytes/s gateway -> broker (payload+topic+header): {total_wire / elapsed:.0f} "
          f"({total_wire / elapsed * 86400 / 1e6:.0f} MB/day)")
    print(f"gateway CPU {cpu * 100:.1f}% of one core, RSS {rss:.0f} MB (peak {peak:.0f} MB)")
    stored = (after["backlog"] or 0) - (before["backlog"] or 0)
    grew = (after["bytes"] or 0) - (before["bytes"] or 0)
    per_message = grew / max(stored, 1)
    rate = grew / outage
    print(f"outage {outage:.0f} s: {stored} messages buffered, {per_message:.0f} B/message by buffer.max_bytes "
          f"accounting, {rate:.0f} B/s -> {GIB / max(rate, 1e-9) / 3600:.0f} h per GiB of buffer.max_bytes")
    print(f"files on disk: {disk1 / 1e6:.1f} MB after the outage (SQLite keeps the high-water mark; page slack "
          f"and the WAL come on top of buffer.max_bytes, see docs/reliability.md)")

if __name__ == "__main__":
    main()
