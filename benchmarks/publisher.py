"""Benchmark of the MQTT publisher: N messages of ~300 bytes at QoS 1 to a real mosquitto, every PUBACK awaited.

Starts mosquitto on a free port (tests/support), a counting subscriber in a separate process (so it does not
share the GIL with the publisher), then publishes N messages twice:

* `batches`: in publish_batch calls of `max_inflight` messages, one after another, the way the runtime
  forwards leases from the buffer;
* `one call`: a single publish_batch of all N (the window alone limits what is in flight).

Prints msg/s with every PUBACK awaited, msg/s until the subscriber has them all, the publisher's CPU
seconds per 100k messages and the process's peak RSS.

    .venv/bin/python benchmarks/publisher.py [-n 100000] [--size 300] [--protocol 5] [--window 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import Mosquitto

from emsedge.config import MqttConfig
from emsedge.publish.mqtt import MqttPublisher

TOPIC = "ems/bench/line/oven/telemetry"

SUBSCRIBER = textwrap.dedent(
    """
    import sys, threading, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    port, topic = int(sys.argv[1]), sys.argv[2]
    count = 0
    ready = threading.Event()
    lock = threading.Lock()
    def on_connect(c, u, f, rc, p):
        c.subscribe(topic, qos=1)
    def on_subscribe(c, u, mid, rcs, p):
        ready.set()
    def on_message(c, u, m):
        global count
        with lock:
            count += 1
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    for line in sys.stdin:
        target = int(line)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with lock:
                if count >= target:
                    break
            time.sleep(0.005)
        with lock:
            print(count, flush=True)
    c.disconnect()
    c.loop_stop()
    """
)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(n: int, size: int, protocol: str, window: int, broker: Mosquitto, counter: subprocess.Popen[str]) -> None:
    assert counter.stdin is not None
    assert counter.stdout is not None
    config = MqttConfig(url=broker.url, protocol=protocol, max_inflight=window)  # type: ignore[arg-type]
    publisher = MqttPublisher(
        config, client_id="bench-gateway", status_topic="ems/bench/line/_gateway/status",
        online_payload=lambda: b'{"state":"online"}', offline_payload=b'{"state":"offline"}',
    )
    pad = "x" * max(size - 40, 0)
    received = 0
    print(f"publisher benchmark: N={n} payload≈{size} B QoS 1 protocol={protocol} window={window}")
    async with anyio.create_task_group() as tg:
        await tg.start(publisher.run)
        with anyio.fail_after(10):
            await publisher.wait_connected()
        for mode in ("batches", "one call"):
            messages = [
                (TOPIC, json.dumps({"seq": i, "pad": pad}, separators=(",", ":")).encode()) for i in range(n)
            ]
            cpu0, t0 = time.process_time(), time.perf_counter()
            ok = 0
            if mode == "batches":
                for start in range(0, n, window):
                    results = await publisher.publish_batch(messages[start : start + window], qos=1)
                    ok += sum(r.ok for r in results)
            else:
                ok = sum(r.ok for r in await publisher.publish_batch(messages, qos=1))
            acked_s = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            received += n
            counter.stdin.write(f"{received}\n")
            counter.stdin.flush()
            got = int(await anyio.to_thread.run_sync(counter.stdout.readline))
            delivered_s = time.perf_counter() - t0
            print(
                f"  {mode:<9} acked {ok}/{n} in {acked_s:.2f}s = {n / acked_s:,.0f} msg/s (PUBACK awaited); "
                f"subscriber has {got - (received - n)}/{n} after {delivered_s:.2f}s = "
                f"{n / delivered_s:,.0f} msg/s; publisher CPU {cpu / n * 100_000:.2f} s per 100k"
            )
            del messages
        tg.cancel_scope.cancel()
    print(f"  peak RSS of the publishing process: {rss_mb():.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="5")
    parser.add_argument("--window", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(workdir=Path(tmp))
        broker.start()
        counter = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, str(broker.port), TOPIC],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert counter.stdin is not None
        assert counter.stdout is not None
        try:
            if counter.stdout.readline().strip() != "ready":
                raise SystemExit("the counting subscriber did not start")
            anyio.run(run, args.n, args.size, args.protocol, args.window, broker, counter)
        finally:
            counter.stdin.close()
            counter.wait(10)
            broker.stop()


if __name__ == "__main__":
    main()
