"""Wire size and consumer decode cost: `mqtt.telemetry_format: full` vs `compact`, on this machine.

The 10k benchmark layout (10 equipment of 1,000 signals, float32/uint16 alternating, unit `Cel`, one
pymodbus server in its own process, polled every second) goes through the real gateway (`emsedge run`)
and a real mosquitto, once per format. A subscriber collects every telemetry (and meta) message; then:

* bytes per value: payload bytes / readings, and on the wire (payload + topic + MQTT 5 PUBLISH header);
* gateway CPU per 100k values during the window (the buffer stores what goes on the wire, so the
  payload bytes per value are also what a value costs in the buffer); the encoder's own cost per
  message (`schema.encode` vs `schema.encode_compact`, in this process, on the received readings);
* consumer decode cost per message and per value, on the received payloads: `orjson.loads` and
  `json.loads` of the full form; of the compact form, the parse alone (a consumer that reads `v`
  directly) and the parse plus `schema.expand_compact` (back to the full form, field for field);
* a check that every compact message expands to the readings the full run delivered.

Run: `.venv/bin/python benchmarks/wire_size.py [--signals 10000 --per-equipment 1000 --window 6]`.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from emsedge import schema  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "ems/bench/smt/line-1"
TARGET = 25.0


def layout(n_signals: int, per_equipment: int) -> list[dict[str, Any]]:
    """The same layout as benchmarks/pipeline.py: equipment of `per_equipment` signals, float32/uint16."""
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
    return equipment


def serve(port: int, n_signals: int, per_equipment: int) -> None:
    import asyncio  # noqa: PLC0415

    from modbus_server import ModbusTestServer, RegisterImage  # noqa: PLC0415

    images = {"holding": RegisterImage(), "input": RegisterImage()}
    size = {"holding": 1, "input": 1}
    for eq in layout(n_signals, per_equipment):
        for n, s in enumerate(eq["signals"]):
            value = 20.0 + n / 8 if s["type"] == "float32" else n % 65536
            images[s["table"]].put(s["address"], s["type"], value)
            size[s["table"]] = max(size[s["table"]], s["address"] + 2)

    async def main() -> None:
        server = ModbusTestServer(holding=images["holding"].registers(size["holding"]),
                                  input=images["input"].registers(size["input"]), port=port)
        await server.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def gateway_config(lay: list[dict[str, Any]], modbus_port: int, mqtt_port: int, workdir: Path, fmt: str) -> Path:
    config = {
        "gateway": {"id": "bench-gw", "site": "bench", "area": "smt", "line": "line-1"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "client_id": f"bench-gw-{fmt}-{time.monotonic_ns()}",
                 "telemetry_format": fmt},
        "buffer": {"path": str(workdir / f"buffer-{fmt}.db")},
        "http": {"listen": None},
        "logging": {"level": "warning", "format": "json"},
        "equipment": [{
            "id": eq["id"], "type": "reflow_oven", "adapter": "modbus",
            "connection": {"host": "127.0.0.1", "port": modbus_port, "unit_id": 1, "timeout": "2s"},
            "poll_interval": "1s", "signals": eq["signals"],
        } for eq in lay],
    }
    path = workdir / f"gateway-{fmt}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Collected:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, str, bytes]] = []

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.items.append((time.time(), msg.topic, msg.payload))

    def window(self, t0: float, t1: float, suffix: str) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for at, t, p in self.items if t0 <= at < t1 and t.endswith(suffix)]

    def all(self, suffix: str) -> list[tuple[str, bytes]]:
        return self.window(0, float("inf"), suffix)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_gateway(config: Path, collected: Collected, warmup: float, window: float,
                workdir: Path) -> tuple[list[tuple[str, bytes]], float]:
    emsedge = REPO / ".venv" / "bin" / "emsedge"
    cmd = [str(emsedge) if emsedge.exists() else "emsedge", "run", "-c", str(config)]
    log_path = workdir / f"{config.stem}.log"
    with log_path.open("wb") as log:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 30
            while not collected.window(start, float("inf"), "/telemetry"):
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"gateway delivered no telemetry:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.05)
            time.sleep(warmup)
            t0, cpu0 = time.time(), proc_cpu(proc.pid)
            time.sleep(window)
            t1, cpu1 = time.time(), proc_cpu(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return collected.window(t0, t1, "/telemetry"), cpu1 - cpu0


def wire_bytes(topic: str, payload: bytes) -> int:
    """MQTT 5 PUBLISH at QoS 1: fixed header, topic, packet id, empty properties, payload."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + varint + remaining


def per_message_us(fn: Any, payloads: list[bytes], rounds: int = 5) -> float:
    """CPU time of this process per call, best of `rounds` passes (CPU, not wall: other load on the box
    stretches wall time, much less the CPU time of the work itself)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for p in payloads:
            fn(p)
        best = min(best, (time.process_time() - t) / len(payloads))
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", type=int, default=10_000)
    parser.add_argument("--per-equipment", type=int, default=1000)
    parser.add_argument("--window", type=float, default=6.0, help="measured seconds per format")
    parser.add_argument("--workdir", help="keep configs, logs and buffers here (default: a temporary directory)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.signals, args.per_equipment)
        return 0

    from support import Mosquitto, free_port, wait_for_port  # noqa: PLC0415

    lay = layout(args.signals, args.per_equipment)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="emsedge-wire-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        broker = Mosquitto(workdir=workdir)
        broker.start()
        collected = Collected()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"wire-sub-{os.getpid()}")
        sub.on_message = collected.on_message
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe([(f"{PREFIX}/+/telemetry", 1), (f"{PREFIX}/+/meta", 1)])
        sub.loop_start()
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--signals", str(args.signals),
                                   "--per-equipment", str(args.per_equipment)], stdout=subprocess.DEVNULL,
                                  stderr=(workdir / "modbus-server.log").open("wb"))
        try:
            wait_for_port(port, timeout=30)
            for fmt in ("full", "compact"):
                items, cpu = run_gateway(gateway_config(lay, port, broker.port, workdir, fmt), collected,
                                         warmup=2.0, window=args.window, workdir=workdir)
                results[fmt] = {"items": items, "cpu": cpu}
        finally:
            server.terminate()
            server.wait(timeout=10)
            sub.loop_stop()
            sub.disconnect()
            broker.stop()
        metas = {orjson.loads(p)["equipment"]: orjson.loads(p) for _, p in collected.all("/meta") if p}

    full_items = [(t, p) for t, p in results["full"]["items"] if b'"emsedge/telemetry@1"' in p[:40]]
    compact_items = [(t, p) for t, p in results["compact"]["items"]
                     if b'"emsedge/telemetry-compact@1"' in p[:40]]
    if not full_items or not compact_items:
        raise SystemExit("no telemetry of one of the formats was received")
    missing = {orjson.loads(p)["equipment"] for _, p in compact_items} - metas.keys()
    if missing:
        raise SystemExit(f"compact telemetry of {sorted(missing)} arrived without its meta")

    # Lossless on this traffic: every compact message expands to the readings the full run delivered.
    reference = {orjson.loads(p)["equipment"]: orjson.loads(p)["readings"] for _, p in full_items}
    for _, p in compact_items:
        expanded = schema.expand_compact(orjson.loads(p), metas[orjson.loads(p)["equipment"]])
        schema.TelemetryMessage.model_validate(expanded)
        if expanded["readings"] != [{**r, "ts": expanded["ts"]} for r in reference[expanded["equipment"]]]:
            raise SystemExit("a compact message does not expand to the full run's readings")

    def values_of(payload: bytes) -> int:
        message = orjson.loads(payload)
        return len(message["readings"]) if "readings" in message else len(message["v"])

    rows = {}
    for fmt, items in (("full", full_items), ("compact", compact_items)):
        n_values = sum(values_of(p) for _, p in items)
        rows[fmt] = {
            "messages": len(items), "values": n_values,
            "payload_per_value": sum(len(p) for _, p in items) / n_values,
            "wire_per_value": sum(wire_bytes(t, p) for t, p in items) / n_values,
            "per_message": sum(len(p) for _, p in items) / len(items),
            "cpu_per_100k": results[fmt]["cpu"] / n_values * 1e5 if n_values else float("nan"),
        }
    full_payloads = [p for _, p in full_items]
    compact_payloads = [p for _, p in compact_items]
    per_msg = len(json.loads(full_payloads[0])["readings"])
    meta_of = {e: schema.TelemetryMeta.from_message(m) for e, m in metas.items()}

    def expand(p: bytes) -> dict[str, Any]:
        m = orjson.loads(p)
        return schema.expand_compact(m, meta_of[m["equipment"]])

    def expand_json(p: bytes) -> dict[str, Any]:
        m = json.loads(p)
        return schema.expand_compact(m, meta_of[m["equipment"]])

    decode = [
        ("full     orjson.loads", per_message_us(orjson.loads, full_payloads)),
        ("full     json.loads", per_message_us(json.loads, full_payloads)),
        ("compact  orjson.loads (read v)", per_message_us(orjson.loads, compact_payloads)),
        ("compact  json.loads (read v)", per_message_us(json.loads, compact_payloads)),
        ("compact  orjson.loads + expand_compact", per_message_us(expand, compact_payloads)),
        ("compact  json.loads + expand_compact", per_message_us(expand_json, compact_payloads)),
    ]
    sample = orjson.loads(full_payloads[0])
    record = schema.telemetry(sample["equipment"], sample["equipment_type"], sample["readings"], ts=sample["ts"])
    sample_meta = meta_of[sample["equipment"]]
    encode_full = per_message_us(lambda _: schema.encode(record, gateway="g", seq=1, message_id="m"), [b""] * 50)
    encode_compact = per_message_us(
        lambda _: schema.encode_compact(record, gateway="g", seq=1, message_id="m", meta=sample_meta), [b""] * 50)

    print(f"\n== {args.signals:,} signals as {len(lay)} equipment of {args.per_equipment:,}, 1 s poll, "
          f"{args.window:.0f} s window per format")
    print(f"{'format':<9}{'messages':>9}{'values':>9}{'B/message':>11}{'B/value':>9}{'wire B/value':>14}"
          f"{'gw CPU s/100k values':>22}")
    for fmt, r in rows.items():
        print(f"{fmt:<9}{r['messages']:>9}{r['values']:>9,}{r['per_message']:>11,.0f}{r['payload_per_value']:>9.1f}"
              f"{r['wire_per_value']:>14.1f}{r['cpu_per_100k']:>22.3f}")
    ratio = rows["full"]["payload_per_value"] / rows["compact"]["payload_per_value"]
    print(f"compact is {ratio:.1f}x smaller; target <= {TARGET:.0f} B/value: "
          f"{rows['compact']['wire_per_value']:.1f} on the wire -> "
          f"{'PASS' if rows['compact']['wire_per_value'] <= TARGET else 'FAIL'}")
    print(f"\nconsumer decode cost ({per_msg} values per message, CPU time, best of 5 passes)")
    print(f"{'':<42}{'us/message':>11}{'ns/value':>10}")
    for name, us in decode:
        print(f"{name:<42}{us:>11.1f}{us * 1000 / per_msg:>10.1f}")
    print(f"{'gateway: schema.encode (full)':<42}{encode_full:>11.1f}{encode_full * 1000 / per_msg:>10.1f}")
    print(f"{'gateway: schema.encode_compact':<42}{encode_compact:>11.1f}{encode_compact * 1000 / per_msg:>10.1f}")
    print(f"meta messages: {len(metas)} retained, {sum(len(orjson.dumps(m)) for m in metas.values()):,} bytes in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
