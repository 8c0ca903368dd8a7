"""Pipeline benchmark: Modbus server -> gateway (`emsedge run`) -> mosquitto -> subscriber, on this machine.

For each size (default 1k, 10k, 50k signals; equipment of 1,000 signals each: float32/uint16 alternating,
in holding and input registers of one pymodbus server running in its own process) it prints:

* bare:    a bare pymodbus client (one connection per equipment, the same read requests as the gateway
           plans) reading flat out for a few seconds: values/s and values per CPU-second of that client;
           then the same client reading once per `--interval` (the floor of any pymodbus-based gateway's CPU
           per value on the paced run: reads only, no decoding, buffer or MQTT), and the same paced reads
           with Modbus TCP framing written out by hand (`raw_reader`, not product code: what the reads cost
           without pymodbus).
* 1s poll: the gateway polling every equipment once a second (`--interval`): values/s delivered to the subscriber,
           poll-to-delivery latency p50/p99 (subscriber receive time - reading `ts`, which is the poll
           start), gateway CPU (cores used, CPU seconds per 100k values, values per CPU-second), peak RSS.
* max:     the gateway with a 1 ms poll interval (every cycle overruns: as fast as it can), values/s
           delivered and the ratio gateway/bare.
* Node-RED (`--node-red DIR`, a folder where `npm install node-red modbus-serial` ran): the same layout
           polled by an equivalent flow (see `NODE_RED_FUNCTION`), its CPU per value beside the gateway's.

`--interval 100ms` makes the paced run 100k values/s at 10k signals (the issue's side-by-side setup);
`--telemetry-format compact` and `--http` (the status page on, as it is by default on a line PC) configure the
gateway as a plant would;
`--profile DIR` records the paced run with py-spy (`pip install py-spy`); `--per-equipment 10000` puts the
same registers in one machine, to see what is per machine and what is per value.

Gateway CPU and RSS come from /proc/<pid>/stat and /proc/<pid>/status (VmHWM) of the `emsedge run`
subprocess. The server, mosquitto and this process (subscriber) run on the same cores and are not counted
in the gateway figures. Run: `.venv/bin/python benchmarks/pipeline.py [--sizes 1000,10000,50000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from calendar import timegm
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from emsedge.adapters.modbus.adapter import ReadRequest, plan_requests  # noqa: E402
from emsedge.adapters.modbus.config import ModbusEquipment  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "ems/bench/smt/line-1"


# ---------------------------------------------------------------------------------------------------
# Layout: N signals as equipment of `per_equipment` signals, alternating float32 / uint16.


def layout(n_signals: int, per_equipment: int) -> list[dict[str, Any]]:
    equipment = []
    for e, first in enumerate(range(0, n_signals, per_equipment)):
        count = min(per_equipment, n_signals - first)
        table = "holding" if e % 2 == 0 else "input"
        address = (e // 2) * ((per_equipment * 3 + 1) // 2)
        signals = []
        for j in range(count):
            type_ = "float32" if j % 2 == 0 else "uint16"
            signals.append({"name": f"s{j}", "table": table, "address": address, "type": type_, "unit": "Cel"})
            address += 2 if type_ == "float32" else 1
        equipment.append({"id": f"eq-{e:03d}", "table": table, "signals": signals})
    if any(s["address"] >= 65535 for eq in equipment for s in eq["signals"]):
        raise SystemExit("too many signals for one server's two register tables")
    return equipment


def equipment_config(eq: dict[str, Any], port: int, interval: str) -> dict[str, Any]:
    return {
        "id": eq["id"], "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout": "2s"},
        "poll_interval": interval, "signals": eq["signals"],
    }


PROFILE: dict[str, Path] = {}
"""`--profile DIR`: the paced gateway run is recorded by py-spy (when installed) into DIR."""

BUFFER_OPTIONS: dict[str, Any] = {}
"""Extra `buffer:` settings for every gateway run (--buffer-sync, --buffer-linger)."""

HTTP: dict[str, int] = {}
"""`--http`: the gateways run with their status page on (a free port), as on a line PC; off otherwise."""

MQTT_OPTIONS: dict[str, Any] = {}
"""Extra `mqtt:` settings for every gateway run (--telemetry-format)."""


def gateway_config(layout_: list[dict[str, Any]], modbus_port: int, mqtt_port: int, workdir: Path,
                   interval: str) -> Path:
    config = {
        "gateway": {"id": "bench-gw", "site": "bench", "area": "smt", "line": "line-1"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "client_id": f"bench-gw-{time.monotonic_ns()}",
                 **MQTT_OPTIONS},
        "buffer": {"path": str(workdir / f"buffer-{time.monotonic_ns()}.db"), **BUFFER_OPTIONS},
        "http": {"listen": f"127.0.0.1:{HTTP['port']}" if HTTP else None},
        "logging": {"level": "warning", "format": "json"},
        "equipment": [equipment_config(eq, modbus_port, interval) for eq in layout_],
    }
    path = workdir / f"gateway-{len(layout_)}-{interval}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------
# The Modbus server (own process: `pipeline.py --serve PORT --signals N --per-equipment M`)


def serve(port: int, n_signals: int, per_equipment: int) -> None:
    from modbus_server import ModbusTestServer, RegisterImage  # noqa: PLC0415

    images = {"holding": RegisterImage(), "input": RegisterImage()}
    size = {"holding": 1, "input": 1}
    for eq in layout(n_signals, per_equipment):
        for n, s in enumerate(eq["signals"]):
            value = 20.0 + n / 8 if s["type"] == "float32" else n % 65536
            images[s["table"]].put(s["address"], s["type"], value)
            size[s["table"]] = max(size[s["table"]], s["address"] + 2)

    async def main() -> None:
        server = ModbusTestServer(
            holding=images["holding"].registers(size["holding"]),
            input=images["input"].registers(size["input"]),
            port=port,
        )
        await server.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------
# The Node-RED equivalent (`--node-red DIR`, where `npm install node-red modbus-serial` ran): per equipment an
# inject node at the poll interval -> a function node reading the same request plan with modbus-serial on
# its own connection (a poll is skipped while the previous one runs) and decoding float32/uint16 into
# {"ts": ..., "<signal>": value} -> an `mqtt out` node, QoS 1, to the same broker. It persists nothing.

NODE_RED_FUNCTION = """
const ModbusRTU = global.get('ModbusRTU');
let c = context.get('c');
if (!c) {
    c = new ModbusRTU();
    await c.connectTCP('127.0.0.1', { port: %(port)d });
    c.setID(1);
    c.setTimeout(2000);
    context.set('c', c);
}
if (context.get('busy')) return null;
context.set('busy', true);
try {
    const payload = { ts: new Date().toISOString() };
    for (const [table, address, count, signals] of %(plan)s) {
        const r = table === 'holding' ? await c.readHoldingRegisters(address, count)
                                      : await c.readInputRegisters(address, count);
        const b = r.buffer;
        for (const [name, offset, type] of signals) {
            payload[name] = type === 'float32' ? b.readFloatBE(offset * 2) : b.readUInt16BE(offset * 2);
        }
    }
    msg.payload = payload;
    return msg;
} finally {
    context.set('busy', false);
}
"""


def node_red_setup(node_red: Path, layout_: list[dict[str, Any]], modbus_port: int, mqtt_port: int,
                   workdir: Path, interval: float) -> list[str]:
    """Write the flow and settings of the Node-RED run; returns its command line."""
    user_dir = workdir / f"node-red-{time.monotonic_ns()}"
    user_dir.mkdir()
    nodes: list[dict[str, Any]] = [
        {"id": "tab", "type": "tab", "label": "bench"},
        {"id": "broker", "type": "mqtt-broker", "broker": "127.0.0.1", "port": str(mqtt_port), "clientid": "",
         "protocolVersion": "4", "keepalive": "60", "cleansession": True, "autoConnect": True, "usetls": False},
    ]
    for k, eq in enumerate(layout_):
        model = ModbusEquipment.model_validate(equipment_config(eq, modbus_port, "1s"))
        plan = [[r.table, r.address, r.count,
                 [[model.signals[i].name, model.signals[i].address - r.address, model.signals[i].type]
                  for i in r.signals]] for r in plan_requests(model.signals)]
        nodes += [
            {"id": f"inject{k}", "type": "inject", "z": "tab", "repeat": f"{interval:g}", "once": True,
             "onceDelay": 0.1, "topic": "", "payload": "", "payloadType": "date", "wires": [[f"poll{k}"]]},
            {"id": f"poll{k}", "type": "function", "z": "tab", "outputs": 1, "libs": [],
             "func": NODE_RED_FUNCTION % {"port": modbus_port, "plan": json.dumps(plan)},
             "wires": [[f"out{k}"]]},
            {"id": f"out{k}", "type": "mqtt out", "z": "tab", "topic": f"{PREFIX}/{eq['id']}/telemetry",
             "qos": "1", "retain": "false", "broker": "broker", "wires": []},
        ]
    (user_dir / "flows.json").write_text(json.dumps(nodes))
    modbus_serial = json.dumps(str(node_red / "node_modules" / "modbus-serial"))
    (user_dir / "settings.js").write_text(
        "module.exports = {\n"
        f"  uiPort: {free_port_()}, httpAdminRoot: false, httpNodeRoot: false, flowFile: 'flows.json',\n"
        f"  functionGlobalContext: {{ ModbusRTU: require({modbus_serial}) }},\n"
        "  logging: { console: { level: 'warn' } },\n"
        "};\n"
    )
    red = node_red / "node_modules" / "node-red" / "red.js"
    return ["node", str(red), "--userDir", str(user_dir), "--settings", str(user_dir / "settings.js")]


def free_port_() -> int:
    from support import free_port  # noqa: PLC0415

    return int(free_port())


# ---------------------------------------------------------------------------------------------------
# Measurements


def proc_cpu(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_mem_mb(pid: int, field_: str) -> float:
    """VmHWM (peak) or VmRSS (now) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


ReadPlan = Callable[[], Awaitable[None]]
"""Reads one connection's whole request plan once."""
Connect = Callable[[list[ReadRequest]], AbstractAsyncContextManager[ReadPlan]]
"""Opens one connection for a request plan."""


async def read_paced(port: int, layout_: list[dict[str, Any]], seconds: float, interval: float,
                     connect: Connect) -> tuple[float, float]:
    """(values/s, values per CPU-second of this process) of reading the gateway's own request plan, one
    connection per equipment (`connect`), flat out (`interval` 0) or once per `interval`."""
    plans = []
    for eq in layout_:
        model = ModbusEquipment.model_validate(equipment_config(eq, port, "1s"))
        plans.append((plan_requests(model.signals), len(model.signals)))
    values = 0
    start = time.perf_counter()
    end = start + seconds
    cpu0 = time.process_time()

    async def worker(plan: list[ReadRequest], n_values: int) -> None:
        nonlocal values
        async with connect(plan) as read_plan:
            next_poll = time.perf_counter()
            while time.perf_counter() < end:
                if interval:
                    await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
                    next_poll += interval
                await read_plan()
                values += n_values

    await asyncio.gather(*(worker(plan, n) for plan, n in plans))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return values / elapsed, values / cpu if cpu else float("nan")


def pymodbus_reader(port: int) -> Connect:
    """The bare pymodbus client: the floor of any pymodbus-based gateway (reads only: no decoding to
    values, no buffer, no MQTT)."""
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    @contextlib.asynccontextmanager
    async def connect(plan: list[ReadRequest]) -> AsyncIterator[ReadPlan]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
        await client.connect()
        readers = {"holding": client.read_holding_registers, "input": client.read_input_registers}

        async def read_plan() -> None:
            for r in plan:
                rr = await readers[r.table](r.address, count=r.count, device_id=1)
                if rr.isError():
                    raise RuntimeError(f"bare client read failed: {rr}")

        try:
            yield read_plan
        finally:
            client.close()

    return connect


def raw_reader(port: int) -> Connect:
    """The same reads without pymodbus: Modbus TCP framing written out here (7-byte MBAP header + function
    3/4; answers parsed with `struct`, registers unpacked like pymodbus does). Requests go one at a time, as in
    the gateway (pipelining a poll's requests in one write would save system calls; Modbus TCP allows several
    outstanding transactions, but pymodbus's own server answers only the first frame of a read).

    Not product code: the floor the gateway would have on a hand-written client, next to pymodbus's."""

    @contextlib.asynccontextmanager
    async def connect(plan: list[ReadRequest]) -> AsyncIterator[ReadPlan]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frames = [struct.pack(">HHHBBHH", tid, 0, 6, 1, 3 if r.table == "holding" else 4, r.address, r.count)
                  for tid, r in enumerate(plan, 1)]
        unpackers = [struct.Struct(f">{r.count}H") for r in plan]

        async def read_plan() -> None:
            for i, frame in enumerate(frames):
                writer.write(frame)
                header = await reader.readexactly(7)
                tid, _, length, _ = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                if tid != i + 1 or pdu[0] & 0x80:
                    raise RuntimeError(f"raw client: unexpected answer {header + pdu!r}")
                unpackers[i].unpack_from(pdu, 2)

        try:
            yield read_plan
        finally:
            writer.close()

    return connect


@dataclass
class Received:
    """What the subscriber saw: per telemetry message (receive time, readings, reading ts)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    items: list[tuple[float, int, bytes]] = field(default_factory=list)
    sample: bytes | None = None

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        payload = msg.payload
        if payload.startswith(b'{"ts":"'):  # the Node-RED flow's {"ts": ..., "<signal>": value, ...}
            n, at = payload.count(b","), 1
        elif b'"v":{' in payload:  # compact telemetry: {..., "ts": ..., "meta": ..., "v": {"<signal>": value}}
            n = len(json.loads(payload)["v"])
            at = payload.find(b'"ts":"')
        else:
            n = payload.count(b'"signal":')
            at = payload.find(b'"ts":"', payload.find(b'"readings":['))
        with self.lock:
            self.items.append((now, n, payload[at + 6 : at + 30]))
            if self.sample is None:
                self.sample = payload

    def window(self, t0: float, t1: float) -> list[tuple[float, int, bytes]]:
        with self.lock:
            return [item for item in self.items if t0 <= item[0] < t1]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.sample = None


_ts_cache: dict[bytes, float] = {}


def parse_ts(ts: bytes) -> float:
    if (v := _ts_cache.get(ts)) is None:
        text = ts.decode()
        v = timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000
        _ts_cache[ts] = v
    return v


def percentile(pairs: list[tuple[float, int]], q: float) -> float:
    """Weighted percentile of (value, weight) pairs."""
    if not pairs:
        return float("nan")
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    target = q * total
    acc = 0
    for v, w in pairs:
        acc += w
        if acc >= target:
            return v
    return pairs[-1][0]


@dataclass
class GatewayRun:
    values_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: float
    window_s: float
    rss_mb: float
    rss_now_mb: float
    values: int
    sys_s: float = 0.0
    """Of `cpu_s`, the kernel's part (syscalls: sockets, fsync)."""

    @property
    def cores(self) -> float:
        return self.cpu_s / self.window_s

    @property
    def values_per_cpu_s(self) -> float:
        return self.values / self.cpu_s if self.cpu_s else float("nan")


def run_gateway(config: Path, received: Received, expected_values: int, warmup: float, window: float,
                workdir: Path, *, profile: bool = False, cmd: list[str] | None = None) -> GatewayRun:
    emsedge = REPO / ".venv" / "bin" / "emsedge"
    if cmd is None:
        cmd = [str(emsedge) if emsedge.exists() else "emsedge", "run", "-c", str(config)]
        if os.environ.get("BENCH_GATEWAY_WRAPPER"):  # e.g. a cProfile wrapper script, for investigation
            cmd = [sys.executable, os.environ["BENCH_GATEWAY_WRAPPER"], *cmd[1:]]
    spy = None
    log = (workdir / f"{config.stem}.log").open("wb")
    received.clear()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120  # 50k signals on a busy 2-core machine take a while to start
        while not received.window(0, float("inf")):
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                tail = (workdir / f"{config.stem}.log").read_text()[-3000:]
                raise SystemExit(f"gateway did not deliver telemetry (exit {proc.poll()}):\n{tail}")
            time.sleep(0.05)
        time.sleep(warmup)
        if profile and "dir" in PROFILE:
            out = PROFILE["dir"] / f"{config.stem}.txt"
            py_spy = Path(sys.executable).parent / "py-spy"
            spy = subprocess.Popen([str(py_spy), "record", "--pid", str(proc.pid), "--threads", "--format", "raw",
                                    "--rate", "200", "--gil", "--duration", str(int(window)), "--output", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0, (user0, sys0) = time.time(), proc_cpu_split(proc.pid)
        time.sleep(window)
        t1, (user1, sys1) = time.time(), proc_cpu_split(proc.pid)
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        rss, rss_now = proc_mem_mb(proc.pid, "VmHWM"), proc_mem_mb(proc.pid, "VmRSS")
    finally:
        if spy is not None:
            spy.wait(timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    items = received.window(t0, t1)
    values = sum(n for _, n, _ in items)
    latencies = [((now - parse_ts(ts)) * 1000, n) for now, n, ts in items]
    _ = expected_values
    return GatewayRun(values / (t1 - t0), percentile(latencies, 0.5), percentile(latencies, 0.99),
                      cpu1 - cpu0, t1 - t0, rss, rss_now, values, sys1 - sys0)


def check_sample(received: Received) -> None:
    """The payload is the documented contract, with the values the server holds."""
    from emsedge.schema import CompactTelemetryMessage, TelemetryMessage  # noqa: PLC0415

    assert received.sample is not None
    if b'"v":{' in received.sample:  # compact: values only (quality is `good` unless `x` says otherwise)
        compact = CompactTelemetryMessage.model_validate_json(received.sample)
        if compact.v["s0"] != 20.0 or compact.v["s1"] != 1 or "s0" in (compact.x or {}):
            raise SystemExit(f"unexpected values delivered: {received.sample[:300]!r}")
        return
    message = TelemetryMessage.model_validate_json(received.sample)
    first = {r.signal: r for r in message.readings}
    if first["s0"].value != 20.0 or first["s1"].value != 1 or first["s0"].quality != "good":
        raise SystemExit(f"unexpected values delivered: {received.sample[:300]!r}")


# ---------------------------------------------------------------------------------------------------


def parse_interval(text: str) -> float:
    return float(text.removesuffix("ms")) / 1000 if text.endswith("ms") else float(text.removesuffix("s"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--per-equipment", type=int, default=1000)
    parser.add_argument("--bare-seconds", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=8.0, help="measurement window of each gateway run")
    parser.add_argument("--interval", default="1s",
                        help="poll interval of the paced run (1s; 100ms gives 100k values/s at 10k signals)")
    parser.add_argument("--no-flat", action="store_true", help="skip the flat-out run")
    parser.add_argument("--node-red", default=None,
                        help="folder where `npm install node-red modbus-serial` ran: add the Node-RED equivalent run")
    parser.add_argument("--profile", default=None,
                        help="directory: record the paced gateway run with py-spy (raw collapsed stacks; samples of"
                             " the thread holding the GIL)")
    parser.add_argument("--buffer-sync", choices=("full", "normal"), default=None,
                        help="buffer.sync of the gateway (default: the config default, full)")
    parser.add_argument("--buffer-linger", default=None, help="buffer.linger of the gateway, e.g. 5ms")
    parser.add_argument("--telemetry-format", choices=("full", "compact"), default=None,
                        help="mqtt.telemetry_format of the gateway (default: the gateway's default, full)")
    parser.add_argument("--http", action="store_true",
                        help="run the gateway with its status page on (the line model observes every reading)")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--signals", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.signals, args.per_equipment)
        return 0

    from support import Mosquitto, free_port, wait_for_port  # noqa: PLC0415

    if args.profile:
        PROFILE["dir"] = Path(args.profile).resolve()
        PROFILE["dir"].mkdir(parents=True, exist_ok=True)
    if args.buffer_sync:
        BUFFER_OPTIONS["sync"] = args.buffer_sync
    if args.http:
        HTTP["port"] = free_port()
    if args.telemetry_format:
        MQTT_OPTIONS["telemetry_format"] = args.telemetry_format
    if args.buffer_linger:
        BUFFER_OPTIONS["linger"] = args.buffer_linger

    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="emsedge-bench-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir=workdir)
        broker.start()
        received = Received()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
        sub.on_message = received.on_message
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe(f"{PREFIX}/+/telemetry", qos=1)
        sub.loop_start()
        try:
            for n in sizes:
                lay = layout(n, args.per_equipment)
                port = free_port()
                server = subprocess.Popen(
                    [sys.executable, __file__, "--serve", str(port), "--signals", str(n),
                     "--per-equipment", str(args.per_equipment)],
                    stdout=subprocess.DEVNULL,
                    stderr=(workdir / f"modbus-server-{n}.log").open("wb"),
                )
                try:
                    wait_for_port(port, timeout=30)
                    interval = parse_interval(args.interval)
                    bare_rate, bare_per_cpu = asyncio.run(
                        read_paced(port, lay, args.bare_seconds, 0.0, pymodbus_reader(port)))
                    paced_bare_rate, paced_bare_per_cpu = asyncio.run(
                        read_paced(port, lay, args.window, interval, pymodbus_reader(port)))
                    _, raw_per_cpu = asyncio.run(read_paced(port, lay, args.window, interval, raw_reader(port)))
                    paced = run_gateway(gateway_config(lay, port, broker.port, workdir, args.interval), received, n,
                                        warmup=2.0, window=args.window, workdir=workdir, profile=True)
                    check_sample(received)
                    nodered = None
                    if args.node_red:
                        nodered = run_gateway(
                            workdir / "node-red", received, n, warmup=4.0, window=args.window, workdir=workdir,
                            cmd=node_red_setup(Path(args.node_red), lay, port, broker.port, workdir, interval))
                    flat = None if args.no_flat else run_gateway(
                        gateway_config(lay, port, broker.port, workdir, "1ms"), received, n,
                        warmup=2.0, window=args.window * 0.75, workdir=workdir)
                finally:
                    server.terminate()
                    server.wait(timeout=10)
                row = {
                    "signals": n, "equipment": len(lay), "interval": args.interval,
                    "bare_values_s": bare_rate, "bare_values_per_cpu_s": bare_per_cpu,
                    "bare_paced_values_s": paced_bare_rate,
                    "bare_paced_cpu_s_per_100k": 1e5 / paced_bare_per_cpu if paced_bare_per_cpu else None,
                    "raw_paced_cpu_s_per_100k": 1e5 / raw_per_cpu,
                    "values_s": paced.values_per_s, "p50_ms": paced.p50_ms, "p99_ms": paced.p99_ms,
                    "cores": paced.cores, "cpu_s_per_100k": paced.cpu_s / paced.values * 1e5 if paced.values else None,
                    "values_per_cpu_s": paced.values_per_cpu_s,
                    "sys_share": paced.sys_s / paced.cpu_s if paced.cpu_s else None,
                    "rss_mb": paced.rss_mb, "rss_now_mb": paced.rss_now_mb,
                }
                if flat is not None:
                    row.update({
                        "max_values_s": flat.values_per_s, "max_values_per_cpu_s": flat.values_per_cpu_s,
                        "max_cores": flat.cores, "max_rss_mb": flat.rss_mb,
                        "ratio_gateway_bare": flat.values_per_s / bare_rate if bare_rate else None,
                    })
                if nodered is not None:
                    row.update({
                        "nodered_values_s": nodered.values_per_s,
                        "nodered_cpu_s_per_100k": nodered.cpu_s / nodered.values * 1e5 if nodered.values else None,
                        "nodered_rss_mb": nodered.rss_mb,
                        "cpu_vs_nodered": (paced.cpu_s / paced.values) / (nodered.cpu_s / nodered.values)
                        if nodered.values and paced.values else None,
                        "bare_paced_vs_nodered": (1 / paced_bare_per_cpu) / (nodered.cpu_s / nodered.values)
                        if nodered.values and paced_bare_per_cpu else None,
                    })
                results.append(row)
                print_row(row)
        finally:
            sub.loop_stop()
            sub.disconnect()
            broker.stop()
    print_summary(results)
    print(json.dumps(results))
    return 0


def print_row(r: dict[str, Any]) -> None:
    print(
        f"\n== {r['signals']:,} signals ({r['equipment']} equipment)\n"
        f"  bare pymodbus client : {r['bare_values_s']:>10,.0f} values/s   "
        f"{r['bare_values_per_cpu_s']:>10,.0f} values/CPU-s\n"
        f"  bare client, {r['interval']:<5} : {r['bare_paced_values_s']:>10,.0f} values/s,"
        f" {r['bare_paced_cpu_s_per_100k'] or float('nan'):.3f} CPU-s/100k values (reads only)\n"
        f"  no pymodbus, {r['interval']:<5}: {r['raw_paced_cpu_s_per_100k']:.3f} CPU-s/100k values"
        f" (hand-written framing, reads only)\n"
        f"  gateway, {r['interval']:<5} poll  : {r['values_s']:>10,.0f} values/s delivered,"
        f" latency p50 {r['p50_ms']:.0f} ms"
        f" p99 {r['p99_ms']:.0f} ms\n"
        f"                         {r['cores']:.2f} cores, {r['cpu_s_per_100k'] or float('nan'):.3f} CPU-s/100k values,"
        f" {r['values_per_cpu_s']:,.0f} values/CPU-s ({r['sys_share'] or 0:.0%} in the kernel),"
        f" peak RSS {r['rss_mb']:.0f} MB"
        f" (RSS at the end {r['rss_now_mb']:.0f} MB)",
        flush=True,
    )
    if "max_values_s" in r:
        print(
            f"  gateway, flat out    : {r['max_values_s']:>10,.0f} values/s delivered, {r['max_values_per_cpu_s']:,.0f}"
            f" values/CPU-s, {r['max_cores']:.2f} cores, peak RSS {r['max_rss_mb']:.0f} MB\n"
            f"  gateway / bare       : {r['ratio_gateway_bare'] or 0:.0%}",
            flush=True,
        )
    if "nodered_values_s" in r:
        print(
            f"  Node-RED equivalent  : {r['nodered_values_s']:>10,.0f} values/s delivered,"
            f" {r['nodered_cpu_s_per_100k'] or float('nan'):.3f} CPU-s/100k values,"
            f" peak RSS {r['nodered_rss_mb']:.0f} MB\n"
            f"  gateway CPU per value / Node-RED's: {r['cpu_vs_nodered'] or float('nan'):.2f}x"
            f" (the bare pymodbus reads alone: {r['bare_paced_vs_nodered'] or float('nan'):.2f}x)",
            flush=True,
        )


def print_summary(results: list[dict[str, Any]]) -> None:
    """The targets of issue 17 item 5 (a lean gateway), measured with `buffer.sync: full` (the default)."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print("\n== targets")
    for r in results:
        if r["signals"] == 10_000:
            print(f"  peak RSS <= 80 MB at 10k signals: {r['rss_mb']:.0f} MB -> {verdict(r['rss_mb'] <= 80)}")
        if r["signals"] == 50_000:
            print(f"  peak RSS <= 150 MB at 50k signals: {r['rss_mb']:.0f} MB -> {verdict(r['rss_mb'] <= 150)}")
    for r in results:
        if r.get("cpu_vs_nodered") is not None:
            ratio = r["cpu_vs_nodered"]
            print(f"  CPU per value <= 0.5x Node-RED's ({r['signals']:,} signals, {r['equipment']} equipment,"
                  f" {r['interval']} poll): {ratio:.2f}x -> {verdict(ratio <= 0.5)}")
    for r in results:
        if r["signals"] == 10_000 and "max_values_s" in r:
            ratio = r["ratio_gateway_bare"] or 0
            print(f"  flat out >= 60% of the bare client at 10k signals: {ratio:.0%} -> {verdict(ratio >= 0.6)}")


if __name__ == "__main__":
    sys.exit(main())
