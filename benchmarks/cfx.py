"""CFX output benchmark: durable buffer -> forwarder(s) -> MQTT (mosquitto) and/or CFX (RabbitMQ, AMQP 1.0).

Appends N telemetry records (10 readings each) to a fresh buffer, then forwards them until every output
acknowledged all of them (`accepted` dispositions for CFX, PUBACKs for MQTT) and prints, per mode (`mqtt`,
`cfx`, `both`), each run in its own child process so RSS is per mode:
messages/s accepted per output, CPU seconds of the process (buffer, forwarders, proton thread, paho thread)
and peak RSS. The brokers run on the same cores and are not counted.
Run: `.venv/bin/python benchmarks/cfx.py [--n 20000]` (needs mosquitto and rabbitmq-server).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

import anyio  # noqa: E402
from support import Mosquitto  # noqa: E402
from support.rabbitmq import RabbitMQ  # noqa: E402

from emsedge import schema  # noqa: E402
from emsedge.buffer import Buffer  # noqa: E402
from emsedge.config import BufferConfig, CfxConfig, MqttConfig  # noqa: E402
from emsedge.forward import Forwarder  # noqa: E402
from emsedge.publish.mqtt import MqttPublisher  # noqa: E402
from emsedge.topics import Topics  # noqa: E402


def record(i: int) -> schema.Record:
    ts = schema.utc_iso()
    readings = [schema.reading(f"zone{k}_temp", 200.0 + (i + k) % 50 * 0.5, unit="Cel", ts=ts) for k in range(10)]
    return schema.telemetry("reflow-1", "reflow_oven", readings, ts=ts)


async def child(mode: str, n: int, mqtt_url: str, amqp_url: str, tmp: Path) -> None:
    from emsedge.publish.cfx import CfxPublisher  # noqa: PLC0415

    outputs = ("mqtt", "cfx") if mode == "both" else (mode,)
    buffer = Buffer(BufferConfig(path=tmp / f"{mode}.db", min_free_bytes=0), gateway="bench",  # type: ignore[arg-type]
                    topics=Topics("ems/bench/smt/line"), outputs=outputs)
    forwarders = []
    async with anyio.create_task_group() as tg:
        await tg.start(buffer.run)
        for i in range(0, n, 500):
            await buffer.append([record(j) for j in range(i, min(i + 500, n))])
        cpu0, t0 = time.process_time(), time.monotonic()
        if "mqtt" in outputs:
            mqtt = MqttPublisher(MqttConfig(url=mqtt_url), client_id="bench", status_topic="ems/bench/status",  # type: ignore[arg-type]
                                 online_payload=lambda: b"{}", offline_payload=b"{}")
            await tg.start(mqtt.run)
            forwarders.append(Forwarder(buffer, mqtt, name="mqtt", qos=1, window=1000, max_inflight_bytes=8 << 20))
        if "cfx" in outputs:
            cfx = CfxPublisher(CfxConfig(broker=amqp_url, address="/exchange/amq.topic", username="guest",  # type: ignore[arg-type]
                                         password="guest", heartbeat=300), {"reflow-1": "bench.line.reflow-1"})
            await tg.start(cfx.run)
            forwarders.append(Forwarder(buffer, cfx, name="cfx", qos=1, window=200, max_inflight_bytes=8 << 20))
        for f in forwarders:
            await tg.start(f.run)
        done: dict[str, float] = {}
        while len(done) < len(forwarders):
            for f in forwarders:
                if f.name not in done and f.delivered >= n:
                    done[f.name] = time.monotonic() - t0
            await anyio.sleep(0.05)
        cpu = time.process_time() - cpu0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rates = ", ".join(f"{name} {n / s:,.0f} msg/s" for name, s in done.items())
        cores = cpu / max(done.values())
        print(f"{mode:5s} n={n}: {rates}; CPU {cpu:.1f} s ({cores:.2f} cores); peak RSS {rss:.0f} MB")
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        mode, mqtt_url, amqp_url, tmp = args.child
        anyio.run(child, mode, args.n, mqtt_url, amqp_url, Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp:
        mosquitto = Mosquitto(workdir=Path(tmp))
        mosquitto.start()
        rabbit = RabbitMQ(Path(tmp) / "rabbit")
        rabbit.start()
        try:
            for mode in ("mqtt", "cfx", "both"):
                subprocess.run([sys.executable, __file__, "--n", str(args.n), "--child", mode, mosquitto.url,
                                rabbit.url, tmp], check=True)
        finally:
            rabbit.stop()
            mosquitto.stop()


if __name__ == "__main__":
    main()
