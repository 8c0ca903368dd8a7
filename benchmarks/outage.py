"""A plant-wide broker outage: N gateway processes hold a backlog and the broker comes back at once (issue 17).

Real parts only: one mosquitto (persistence on, so the MES subscriber's session survives the kill), N
Modbus equipment processes (tests/support/equipment_process.py) and N `emsedge run` daemons, each polling
its own equipment with `--equipment` machines every `--poll`; the MES side is one QoS 1 subscriber
process per line with a persistent session (a consumer group member that keeps one line's messages).
After a warm-up the broker is SIGKILLed, kept down `--outage` seconds and started again on the same port.
Measured from the moment the broker is started again ("back"; its own start-up counts against the
gateways):

* first message: per gateway, the first data message that reaches MES after the broker is back
  (p50 / max over gateways; max = every gateway delivered);
* drain: per gateway, until every message produced before the broker was back has reached MES (p50 / max);
* live latency during the drain: arrival minus the record's `ts`, for messages produced after their
  gateway was connected again and delivered before the last gateway drained (p50 / p99);
* broker CPU: mosquitto's CPU seconds from "back" to the end of the drain, as the mean % of one core,
  and the busiest 0.5 s.

Every mode runs with `buffer.replay_rate` unset (backlog and live strictly oldest first, as fast as it
goes) and set (`--replay-rate` messages/s per gateway beside live data). `--emsedge` runs another build's
daemon (e.g. a checkout of the previous release) for a before/after comparison; its config uses only keys
that release knows.

    .venv/bin/python benchmarks/outage.py [--gateways 10] [--outage 30] [--equipment 5] [--poll 100ms]
        [--replay-rate 200] [--modes unset,paced] [--emsedge PATH] [--label after]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import Mosquitto, free_port, wait_for_port  # noqa: E402 - after the path set-up above

PREFIX = "ems/bench/smt"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Arrival:
    at: float
    gateway: str
    seq: int
    ts: float


SUBSCRIBER = textwrap.dedent(
    """
    import sys, threading, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    port, topic, client_id, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    sink = open(out, "a", buffering=1 << 16)
    lock = threading.Lock()
    def on_connect(c, u, f, rc, p):
        c.subscribe(topic, qos=1)
    def on_subscribe(c, u, mid, rcs, p):
        with lock:
            sink.write("ready\\n")
    def on_message(c, u, m):
        if not m.retain:
            line = "%.6f %s\\n" % (time.time(), m.payload.decode())
            with lock:
                sink.write(line)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.reconnect_delay_set(0.05, 0.2)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    while True:
        time.sleep(0.05)
        with lock:
            sink.flush()
    """
)


class Mes:
    """The MES side: one QoS 1 subscriber process per line (persistent session, like a consumer group
    member that keeps a line's messages), each writing (arrival time, payload) lines to a file."""

    def __init__(self, port: int, lines: int, work: Path, started: list[subprocess.Popen[bytes]]) -> None:
        self.files = [work / f"mes-{index}.txt" for index in range(lines)]
        self.offsets = [0] * lines
        self.arrivals: list[Arrival] = []
        for index, path in enumerate(self.files):
            path.touch()
            started.append(subprocess.Popen([
                sys.executable, "-c", SUBSCRIBER, str(port), f"{PREFIX}/line-{index}/+/telemetry",
                f"mes-line-{index}", str(path),
            ]))
        deadline = time.monotonic() + 30
        while not all(path.read_bytes().startswith(b"ready") for path in self.files):
            if time.monotonic() > deadline:
                raise TimeoutError("the MES subscribers did not connect")
            time.sleep(0.05)

    def parse(self) -> list[Arrival]:
        for index, path in enumerate(self.files):
            with path.open("rb") as stream:
                stream.seek(self.offsets[index])
                chunk = stream.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offsets[index] += len(complete)
            for line in complete.splitlines():
                if not line or line == b"ready":
                    continue
                at, payload = line.split(b" ", 1)
                body = json.loads(payload)
                self.arrivals.append(Arrival(float(at), body["gateway"], body["seq"], _epoch(body["ts"])))
        return self.arrivals


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def gateway_config(work: Path, index: int, broker_port: int, equipment_port: int, args: argparse.Namespace,
                   replay_rate: float | None) -> Path:
    machines = [{
        "id": f"oven-{m}", "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": equipment_port, "timeout": "1s"},
        "poll_interval": args.poll,
        "signals": [
            {"name": "zone1_top_temp", "table": "holding", "address": 0, "type": "float32", "unit": "Cel"},
            {"name": "conveyor_speed", "table": "holding", "address": 2, "type": "uint16", "scale": 0.1,
             "unit": "cm/min"},
            {"name": "board_count", "table": "holding", "address": 4, "type": "uint32", "word_order": "little"},
        ],
    } for m in range(args.equipment)]
    config: dict[str, Any] = {
        "gateway": {"id": f"gw-{index}", "site": "bench", "area": "smt", "line": f"line-{index}"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "qos": 1},  # reconnect settings: the defaults
        "buffer": {"path": str(work / f"buffer-{index}.db"), "replay_rate": replay_rate},
        "http": {"listen": None},
        "logging": {"format": "json", "level": "info"},
        "equipment": machines,
    }
    path = work / f"gateway-{index}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuSampler:
    """mosquitto's CPU seconds every 0.1 s (its pid changes: the broker is restarted)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            pid = self.pid
            if pid is not None:
                with contextlib.suppress(OSError, IndexError):
                    self.samples.append((time.time(), cpu_seconds(pid)))

    def watch(self, pid: int) -> None:
        self.samples = []
        self.pid = pid

    def between(self, start: float, end: float) -> tuple[float, float]:
        """(mean % of one core, busiest 0.5 s in %) over [start, end]; the broker was started at `start`."""
        window = [(start, 0.0), *((t, c) for t, c in self.samples if start <= t <= end + 0.1)]
        if len(window) < 2:
            return float("nan"), float("nan")
        mean = (window[-1][1] - window[0][1]) / max(window[-1][0] - window[0][0], 1e-9) * 100
        spans = list(zip(window, window[5:], strict=False)) or [(window[0], window[-1])]
        peak = max((c2 - c1) / max(t2 - t1, 1e-9) * 100 for (t1, c1), (t2, c2) in spans)
        return mean, peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    label: str
    mode: str
    first: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    backlog: int = 0
    live_latency: list[float] = field(default_factory=list)
    steady_latency: list[float] = field(default_factory=list)
    broker_cpu_mean: float = float("nan")
    broker_cpu_peak: float = float("nan")
    missing: int = 0
    connected: list[float] = field(default_factory=list)


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def reconnected(work: Path, gateways: int, back: float) -> dict[str, float]:
    """Per gateway id, seconds from `back` to its first `mqtt connected` log line after it."""
    times: dict[str, float] = {}
    for index in range(gateways):
        for line in (work / f"gateway-{index}.log").read_text(errors="replace").splitlines():
            if '"mqtt connected"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                at = _epoch(json.loads(line)["timestamp"])
                if at >= back - 0.01:
                    times[f"gw-{index}"] = at - back
                    break
    return times


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_mode(args: argparse.Namespace, mode: str, replay_rate: float | None) -> Result:
    result = Result(args.label, mode)
    with tempfile.TemporaryDirectory(prefix="emsedge-outage-") as tmp, processes() as started:
        work = Path(tmp)
        broker = Mosquitto(workdir=work, persistence=True)
        broker.start()
        assert broker.process is not None
        sampler = CpuSampler()
        mes = Mes(broker.port, args.gateways, work, started)
        try:
            for index in range(args.gateways):
                port = free_port()
                started.append(subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "support" / "equipment_process.py"), str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
                wait_for_port(port)
                config = gateway_config(work, index, broker.port, port, args, replay_rate)
                with open(work / f"gateway-{index}.log", "wb") as log:
                    started.append(subprocess.Popen([args.emsedge, "run", "-c", str(config)], stdout=log, stderr=log))
            gateways = {f"gw-{i}" for i in range(args.gateways)}
            deadline = time.monotonic() + 120
            while {a.gateway for a in mes.parse()} != gateways:
                if time.monotonic() > deadline:
                    raise TimeoutError("not every gateway delivered data within 120 s")
                time.sleep(0.2)
            time.sleep(args.warmup)  # steady state; the broker's persistence has saved the MES session
            steady_from = time.time() - args.warmup / 2
            killed_at = time.time()
            result.steady_latency = [a.at - a.ts for a in mes.parse() if steady_from <= a.ts < killed_at]
            broker.stop(kill=True)
            time.sleep(args.outage)
            back = time.time()  # before the start: the broker's own start-up counts against the gateways
            broker.start()
            assert broker.process is not None
            sampler.watch(broker.process.pid)
            drained: dict[str, float] = {}
            first: dict[str, float] = {}
            deadline = time.monotonic() + args.outage * 2 + 60
            while len(drained) < len(gateways) and time.monotonic() < deadline:
                time.sleep(0.2)
                arrivals = mes.parse()
                by_gateway: dict[str, list[Arrival]] = {g: [] for g in gateways}
                for a in arrivals:
                    by_gateway[a.gateway].append(a)
                for gateway, items in by_gateway.items():
                    # Sent after the broker was back: produced after the kill (what the broker held for MES
                    # when it was killed is delivered again from its persistence, and does not count).
                    after = [a for a in items if a.at >= back and a.ts >= killed_at]
                    if after and gateway not in first:
                        first[gateway] = min(a.at for a in after) - back
                    if gateway in drained:
                        continue
                    # The backlog: seqs produced while the broker was down. (What the broker had acknowledged
                    # but not yet passed on when it was SIGKILLed is the broker's loss, not the gateway's.)
                    outage_seqs = [a.seq for a in items if killed_at + 0.5 <= a.ts < back]
                    live_seqs = [a.seq for a in items if a.ts >= back]
                    if not live_seqs or not outage_seqs:
                        continue
                    low, boundary = min(outage_seqs), min(live_seqs)
                    backlog = [a for a in items if low <= a.seq < boundary]
                    if len({a.seq for a in backlog}) >= boundary - low:
                        drained[gateway] = max(a.at for a in backlog) - back
            arrivals = mes.parse()
            result.first = sorted(first.values())
            result.drain = sorted(drained.values())
            result.missing = len(gateways) - len(drained)
            drain_end = back + (max(result.drain) if result.drain else 0.0)
            result.backlog = sum(1 for a in arrivals if killed_at - 1 <= a.ts < back)
            connected = reconnected(work, args.gateways, back)
            result.connected = sorted(connected.values())
            # Live data during the drain: produced once its gateway was connected again (what waited for the
            # reconnect itself is the outage, not the drain), delivered before the last gateway drained.
            result.live_latency = [
                a.at - a.ts for a in arrivals
                if a.gateway in connected and a.ts >= back + connected[a.gateway] and a.at <= drain_end
            ]
            result.broker_cpu_mean, result.broker_cpu_peak = sampler.between(back, drain_end)
        finally:
            sampler.stop()
            broker.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker is down")
    parser.add_argument("--equipment", type=int, default=5, help="machines per gateway")
    parser.add_argument("--poll", default="100ms", help="poll interval of every machine")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--replay-rate", type=float, default=200.0, help="buffer.replay_rate of the paced mode")
    parser.add_argument("--modes", default="unset,paced")
    parser.add_argument("--emsedge", default=str(Path(sys.executable).with_name("emsedge")),
                        help="the emsedge executable the gateways run")
    parser.add_argument("--label", default="this build")
    args = parser.parse_args()

    results = []
    for mode in args.modes.split(","):
        rate = None if mode == "unset" else args.replay_rate
        print(f"running {args.label} / {mode}: {args.gateways} gateways x {args.equipment} machines every {args.poll}, "
              f"{args.outage:g} s outage ...", flush=True)
        results.append(run_mode(args, mode, rate))

    def ms(values: list[float], q: float) -> str:
        value = percentile(values, q)
        return "-" if value != value else f"{value:.2f}"

    print()
    header = (f"{'build':<12} {'replay_rate':<12} {'backlog':>8} {'conn p50':>9} {'conn max':>9} "
              f"{'first p50':>10} {'first max':>10} "
              f"{'drain p50':>10} {'drain max':>10} {'live p50':>9} {'live p99':>9} {'steady p99':>10} "
              f"{'broker cpu':>10} {'peak 0.5s':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        rate = "unset" if r.mode == "unset" else f"{args.replay_rate:g}/s"
        print(f"{r.label:<12} {rate:<12} {r.backlog:>8} {ms(r.connected, 50):>9} {ms(r.connected, 100):>9} "
              f"{ms(r.first, 50):>10} {ms(r.first, 100):>10} "
              f"{ms(r.drain, 50):>10} {ms(r.drain, 100):>10} {ms(r.live_latency, 50):>9} {ms(r.live_latency, 99):>9} "
              f"{ms(r.steady_latency, 99):>10} {r.broker_cpu_mean:>9.0f}% {r.broker_cpu_peak:>9.0f}%"
              + (f"   ({r.missing} gateway(s) not drained)" if r.missing else ""))
    print("\nseconds after the broker was started again: conn (the gateway's `mqtt connected` log line), first (its "
          "first message at MES), drain (its whole backlog at MES); live: latency in s (arrival - record ts) of "
          "messages produced after their gateway reconnected, until the last gateway drained; steady: the same before "
          "the outage; broker cpu: mean % of one core from back to the last gateway drained")


if __name__ == "__main__":
    main()
