"""Cost of the status page: gateway CPU and RSS with 0, 1 and 10 browsers watching a 10k-signal line.

The line: one pymodbus server in its own process (`pipeline.py --serve`) with 10 machines of 1,000
signals each, polled once a second by `emsedge run` (10k values/s through normalise, the line model, the
buffer and mosquitto). The browsers are server-sent-event clients of `/events` read by one thread, like a
browser tab: half watch the overview, half the detail page of one machine (1,000 signals with sparklines).

Prints, per number of clients: gateway CPU (cores used, over the window), RSS now and peak, and the bytes per
second the clients received. Also prints what the web stack costs by itself: the RSS of importing the
gateway's modules with and without starlette/uvicorn and the status page module.

Run: `.venv/bin/python benchmarks/web.py [--window 20]`. About two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from pipeline import equipment_config, layout, proc_cpu, proc_mem_mb  # noqa: E402
from support import Mosquitto, free_port, wait_for_port  # noqa: E402

SIGNALS = 10_000
PER_EQUIPMENT = 1_000


class Clients:
    def __init__(self, port: int, n: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.bytes = 0
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            path = "/events" if i % 2 == 0 else "/events?machine=eq-000"
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            s.setblocking(False)
            self.selector.register(s, selectors.EVENT_READ)
            self.sockets.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.1):
                with contextlib.suppress(BlockingIOError):
                    self.bytes += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.sockets:
            s.close()


def import_rss(modules: str) -> float:
    code = (f"import {modules}\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per client count")
    args = parser.parse_args()

    base = import_rss("emsedge.service, emsedge.buffer, emsedge.normalise, emsedge.publish.mqtt")
    with_web = import_rss("emsedge.service, emsedge.buffer, emsedge.normalise, emsedge.publish.mqtt, "
                          "emsedge.web.server")
    print(f"import RSS: gateway modules {base:.1f} MB, plus starlette+uvicorn+status page {with_web:.1f} MB "
          f"(+{with_web - base:.1f} MB)")

    with tempfile.TemporaryDirectory(prefix="emsedge-bench-web-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(workdir=work)
        broker.start()
        modbus_port, http_port = free_port(), free_port()
        server = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--serve",
                                   str(modbus_port), "--signals", str(SIGNALS), "--per-equipment",
                                   str(PER_EQUIPMENT)], stdout=subprocess.PIPE, text=True)
        gateway = None
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
            config = {
                "gateway": {"id": "bench-gw", "site": "bench", "area": "smt", "line": "line-1"},
                "mqtt": {"url": broker.url},
                "buffer": {"path": str(work / "buffer.db"), "sync": "normal"},
                "http": {"listen": f"127.0.0.1:{http_port}", "max_live_clients": 20},
                "logging": {"level": "warning", "format": "json"},
                "equipment": [equipment_config(eq, modbus_port, "1s") for eq in layout(SIGNALS, PER_EQUIPMENT)],
            }
            path = work / "gateway.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            with open(work / "gateway.log", "wb") as log:
                gateway = subprocess.Popen([str(Path(sys.executable).parent / "emsedge"), "run", "-c", str(path)],
                                           stdout=log, stderr=log, env={**os.environ})
            wait_for_port(http_port, timeout=60)
            time.sleep(10)  # warm-up: every machine connected and polled a few times
            print(f"{SIGNALS} signals polled every second; window {args.window:.0f} s per row")
            print(f"{'clients':>7} {'CPU cores':>10} {'RSS MB':>8} {'peak MB':>8} {'to clients KB/s':>16}")
            for n in (0, 1, 10):
                clients = Clients(http_port, n) if n else None
                time.sleep(2)
                cpu0, t0, b0 = proc_cpu(gateway.pid), time.monotonic(), clients.bytes if clients else 0
                time.sleep(args.window)
                cpu = (proc_cpu(gateway.pid) - cpu0) / (time.monotonic() - t0)
                sent = ((clients.bytes if clients else 0) - b0) / (time.monotonic() - t0) / 1024
                print(f"{n:>7} {cpu:>10.3f} {proc_mem_mb(gateway.pid, 'VmRSS'):>8.1f} "
                      f"{proc_mem_mb(gateway.pid, 'VmHWM'):>8.1f} {sent:>16.1f}")
                if clients:
                    clients.close()
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            server.kill()
            server.wait()
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
