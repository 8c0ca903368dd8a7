"""Plant benchmark: N gateways x M machines on a 3-node NATS JetStream cluster (MQTT 3.1.1), on this machine.

For each N (default 1, 5, 10): N `emsedge run` processes, one per line, each polling M Modbus machines of S
uint16 holding registers every `--interval` (one pymodbus process serves every machine of the run, each on
its own port), each listing the three nodes in another order (`mqtt.protocol: "3.1.1"`, QoS 1,
`buffer.sync: full` unless `--sync normal`). The MES side (`--consumers` QoS 1 subscriptions on the other
nodes, lines partitioned over them, as a NATS plant must: no shared subscriptions) counts the values received for
`--seconds` after a warm-up and takes each telemetry message's end-to-end latency (receive time - the
envelope's `ts`, which is the poll's time).

Prints one row per N: total values/s delivered (and the rate configured), gateway CPU (% of one core)
and RSS per gateway (mean and max over the gateways; VmRSS at the end and VmHWM, the peak), end-to-end
latency p50/p99, and the CPU of the three nodes, of the simulator and of the meter (this process).
Everything (cluster, simulator, gateways, subscriber) shares this machine's cores: the figures are for a
crowded box, not for a plant's line PCs.

Run: `.venv/bin/python benchmarks/plant.py [--gateways 1,5,10] [--machines 4] [--signals 100]
[--interval 100ms] [--seconds 20] [--consumers 2]`. About 1.5 minutes per N. Needs `nats-server` (`make nats-server`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks"), str(REPO / "tests" / "integration")]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from pipeline import proc_cpu, proc_mem_mb  # noqa: E402
from support import free_port, wait_for_port  # noqa: E402
from support.nats_cluster import NatsCluster  # noqa: E402

EMSEDGE = str(Path(sys.executable).with_name("emsedge"))
SITE = "plant-b"
ORDERS = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (1, 0, 2), (2, 1, 0)]


def serve(signals: int, ports: list[int]) -> None:
    """Child mode: one Modbus machine of `signals` changing holding registers on each port."""
    from modbus_server import ModbusTestServer  # noqa: PLC0415

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for port in ports:
                await stack.enter_async_context(
                    ModbusTestServer(holding=[(i * 7) % 1000 for i in range(signals)], port=port)
                )
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


def gateway_config(folder: Path, line: str, urls: list[str], ports: list[int], signals: int,
                   interval: float, sync: str, http: str | None = None) -> Path:
    equipment = [{
        "id": f"m{k:02d}", "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": port, "timeout": "1s"},
        "poll_interval": f"{interval * 1000:g}ms",
        "signals": [{"name": f"s{i}", "table": "holding", "address": i, "type": "uint16"} for i in range(signals)],
    } for k, port in enumerate(ports)]
    config = {
        "gateway": {"id": line, "site": SITE, "area": "smt", "line": line},
        "mqtt": {"url": urls, "protocol": "3.1.1", "qos": 1},
        "buffer": {"path": str(folder / "buffer.db"), "sync": sync},
        "http": {"listen": http},
        "logging": {"format": "json", "level": "warning"},
        "equipment": equipment,
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Meter:
    """The MES side: counts values and takes end-to-end latencies while `counting` is set."""

    def __init__(self, port: int, lines: list[str], qos: int) -> None:
        self.lock = threading.Lock()
        self.counting = False
        self.values = 0
        self.messages = 0
        self.latencies: list[float] = []
        self.per_line: dict[str, int] = {}
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plant-meter-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"ems/{SITE}/smt/{line}/+/telemetry", qos)
                                                            for line in lines])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(30):
            raise TimeoutError("the meter got no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if not self.counting:
            return
        try:
            sampled, values, line = _scan(bytes(msg.payload))
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        with self.lock:
            self.messages += 1
            self.values += values
            self.latencies.append(now - sampled)
            self.per_line[line] = self.per_line.get(line, 0) + 1

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _scan(payload: bytes) -> tuple[float, int, str]:
    """(envelope ts as epoch seconds, readings, gateway) of a full-format telemetry message, without decoding
    its readings: the meter shares the machine's cores with the plant, so it must cost little per value."""
    head, sep, tail = payload.partition(b'"readings":')
    if not sep:  # another telemetry form: decode it whole
        decoded = json.loads(payload)
        readings = decoded.get("readings") or decoded.get("values") or []
        ts, gateway = decoded["ts"], decoded["gateway"]
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp(), len(readings), str(gateway)
    envelope = head if b'"ts":"' in head else payload[payload.rindex(b"]"):]
    ts = envelope.split(b'"ts":"', 1)[1].split(b'"', 1)[0].decode()
    gateway = payload.split(b'"gateway":"', 1)[1].split(b'"', 1)[0].decode()
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp(), tail.count(b'"signal":'), gateway


def _first_gateway(http: str) -> dict[str, float]:
    """Polls, skipped cycles, published messages (cumulative) and backlog of the first gateway, from /metrics."""
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {"polls": 0.0, "skipped": 0.0, "published": 0.0, "backlog": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("emsedge_polls_total"):
            out["polls"] += float(value)
        elif name.startswith("emsedge_skipped_cycles_total"):
            out["skipped"] += float(value)
        elif name.startswith("emsedge_messages_published_total"):
            out["published"] += float(value)
        elif name.startswith("emsedge_backlog_messages"):
            out["backlog"] += float(value)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def run(cluster: NatsCluster, n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ports = [free_port() for _ in range(n * args.machines)]
    machines = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.signals), *map(str, ports)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    gateways: list[subprocess.Popen[bytes]] = []
    meters: list[Meter] = []
    lines = [f"line-{g:02d}" for g in range(n)]
    http = f"127.0.0.1:{free_port()}"  # the first gateway's /metrics: its polls, skipped cycles and backlog
    try:
        for port in ports:
            wait_for_port(port)
        for k in range(min(args.consumers, n)):  # the consumer group, partitioned by line
            meters.append(Meter(cluster.nodes[1 + k % 2].mqtt_port, lines[k::args.consumers], args.consumer_qos))
        for g in range(n):
            line = f"line-{g:02d}"
            folder = tmp / f"n{n}" / line
            folder.mkdir(parents=True)
            urls = [cluster.nodes[i].mqtt_url for i in ORDERS[g % len(ORDERS)]]
            config = gateway_config(folder, line, urls, ports[g * args.machines:(g + 1) * args.machines],
                                    args.signals, args.interval, args.sync, http if g == 0 else None)
            with open(folder / "gateway.log", "ab") as log:
                gateways.append(subprocess.Popen([EMSEDGE, "run", "-c", str(config)], stdout=log, stderr=log))
        # Warm-up: every line delivers, then `--warmup` more seconds.
        for meter in meters:
            meter.counting = True
        deadline = time.monotonic() + 120
        while sum(len(meter.per_line) for meter in meters) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(len(m.per_line) for m in meters)} of {n} lines deliver")
            dead = [p for p in gateways if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a gateway exited with {dead[0].returncode}")
            time.sleep(0.2)
        time.sleep(args.warmup)
        nodes = [node.process.pid for node in cluster.nodes if node.process is not None]
        for meter in meters:
            with meter.lock:
                meter.values, meter.messages, meter.latencies = 0, 0, []
        cpu0 = [proc_cpu(p.pid) for p in gateways]
        node_cpu0 = [proc_cpu(pid) for pid in nodes]
        sim_cpu0, meter_cpu0 = proc_cpu(machines.pid), time.process_time()
        first0 = _first_gateway(http)
        began = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - began
        first1 = _first_gateway(http)
        cpu = [(proc_cpu(p.pid) - c) / elapsed * 100 for p, c in zip(gateways, cpu0, strict=True)]
        node_cpu = [(proc_cpu(pid) - c) / elapsed * 100 for pid, c in zip(nodes, node_cpu0, strict=True)]
        sim_cpu = (proc_cpu(machines.pid) - sim_cpu0) / elapsed * 100
        meter_cpu = (time.process_time() - meter_cpu0) / elapsed * 100
        rss = [proc_mem_mb(p.pid, "VmRSS") for p in gateways]
        peak = [proc_mem_mb(p.pid, "VmHWM") for p in gateways]
        values, latencies = 0, []
        for meter in meters:
            with meter.lock:
                values += meter.values
                latencies += meter.latencies
        return {
            "n": n, "values_s": values / elapsed,
            "configured_s": n * args.machines * args.signals / args.interval,
            "cpu_mean": statistics.mean(cpu), "cpu_max": max(cpu),
            "rss_mean": statistics.mean(rss), "rss_max": max(rss), "peak_max": max(peak),
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "nodes_cpu": sum(node_cpu), "sim_cpu": sim_cpu, "meter_cpu": meter_cpu,
            "first_polls_s": (first1["polls"] - first0["polls"]) / elapsed,
            "first_skipped_s": (first1["skipped"] - first0["skipped"]) / elapsed,
            "first_published_s": (first1["published"] - first0["published"]) / elapsed,
            "first_backlog": first1["backlog"],
        }
    finally:
        for p in gateways:
            p.send_signal(signal.SIGTERM)
        for p in gateways:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for meter in meters:
            meter.stop()
        machines.kill()
        machines.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), [int(p) for p in sys.argv[3:]])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", default="1,5,10", help="comma-separated N (gateway processes)")
    parser.add_argument("--machines", type=int, default=4, help="M machines per gateway")
    parser.add_argument("--signals", type=int, default=100, help="holding registers per machine")
    parser.add_argument("--interval", default="100ms", help="poll interval (e.g. 100ms, 1s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per N")
    parser.add_argument("--consumers", type=int, default=2,
                        help="MES subscriptions, lines partitioned over them (one QoS 1 subscription on NATS "
                        "tops out at a few hundred messages/s)")
    parser.add_argument("--consumer-qos", type=int, choices=(0, 1), default=1,
                        help="QoS of the MES subscriptions (on NATS, QoS 1 goes through the $MQTT_msgs stream)")
    parser.add_argument("--sync", choices=("full", "normal"), default="full", help="buffer.sync of every gateway")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after every line delivers")
    args = parser.parse_args()
    text = args.interval.strip()
    args.interval = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
    sizes = [int(x) for x in args.gateways.split(",")]
    print(f"plant: N gateways x {args.machines} machines x {args.signals} signals every "
          f"{args.interval * 1000:g} ms, {args.consumers} MES subscriptions (QoS {args.consumer_qos}); "
          f"3-node NATS {_nats_version()} "
          f"(MQTT 3.1.1, QoS 1, stream replicas 3), buffer.sync: {args.sync}, "
          f"{os.cpu_count()} cores shared by everything", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="plant-") as tmp:
        cluster = NatsCluster(Path(tmp) / "nats")
        (Path(tmp) / "nats").mkdir()
        try:
            cluster.start()
            for n in sizes:
                row = run(cluster, n, args, Path(tmp))
                rows.append(row)
                print(f"  N={n}: {row['values_s']:,.0f} values/s; first gateway: {row['first_polls_s']:.1f} polls/s, "
                      f"{row['first_skipped_s']:.1f} skipped cycles/s, {row['first_published_s']:.1f} published/s, "
                      f"backlog {row['first_backlog']:.0f} at the end", flush=True)
        finally:
            cluster.stop()
    print()
    print("| N | values/s delivered (configured) | gateway CPU % of a core, mean / max | gateway RSS MB, mean / max "
          "(peak) | end-to-end p50 / p99 ms | CPU %: 3 NATS nodes / simulator / meter |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['values_s']:,.0f} ({r['configured_s']:,.0f}) "
              f"| {r['cpu_mean']:.1f} / {r['cpu_max']:.1f} "
              f"| {r['rss_mean']:.0f} / {r['rss_max']:.0f} ({r['peak_max']:.0f}) "
              f"| {r['p50_ms']:.0f} / {r['p99_ms']:.0f} "
              f"| {r['nodes_cpu']:.0f} / {r['sim_cpu']:.0f} / {r['meter_cpu']:.0f} |")
    return 0


def _nats_version() -> str:
    from support.nats_cluster import nats_binary  # noqa: PLC0415

    binary = nats_binary()
    if binary is None:
        raise SystemExit("nats-server is not installed: make nats-server")
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
