"""HSMS benchmark: SECS-II codec throughput and S6F11 event reports per second end to end.

Prints:

* codec:  encode and decode MB/s (and bodies/s) of a realistic AOI S6F11 body: board serial, result,
          defect count and a list of 20 defects (refdes, code, x, y) in two reports.
* emit:   the project's GEM equipment simulator sends S6F11 as fast as the host acknowledges them ->
          HSMS adapter -> `ctx.emit` (a counter). One process, one event loop, so simulator and
          adapter share one core. `window` > 1 keeps that many S6F11 transactions open at once.
* mqtt:   the same simulator -> `emsedge run` (subprocess: adapter, normaliser, SQLite buffer, paho)
          -> mosquitto -> a paho subscriber counting `unit_inspected` events: reports/s delivered,
          and the gateway's CPU use from /proc.

Run: `.venv/bin/python benchmarks/hsms.py [--seconds 3] [--events 10000]`. Bounded: about a minute.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]

import anyio  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import structlog  # noqa: E402
from hsms_support import CEID_BOARD_INSPECTED, Collector, aoi_config, aoi_simulator, context  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from support import Mosquitto  # noqa: E402
from support.daemon import Daemon, gateway_config  # noqa: E402

from emsedge.adapters.hsms.gem import HsmsAdapter  # noqa: E402
from emsedge.adapters.hsms.secs2 import F4, U4, A, L, decode, encode  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def s6f11_body(defects: int = 20) -> Any:
    defect_items = [L(A(f"R{i:03d}"), A("BRIDGE" if i % 2 else "MISSING"), F4(i * 1.25), F4(i * 0.5))
                    for i in range(defects)]
    return L(U4(1), U4(3001), L(
        L(U4(100), L(A("PCB-2026-000123456"), A("FAIL"), U4(defects))),
        L(U4(101), L(L(*defect_items))),
    ))  # fmt: skip


def bench_codec(seconds: float) -> None:
    body = s6f11_body()
    wire = encode(body)
    size = len(wire)
    for name, fn, arg in (("encode", encode, body), ("decode", decode, wire)):
        n = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(200):
                fn(arg)  # type: ignore[operator]
            n += 200
        print(f"codec {name}: {n / elapsed:,.0f} bodies/s, {n * size / elapsed / 1e6:.1f} MB/s "
              f"(body {size} bytes)")


async def bench_emit(seconds: float, window: int) -> None:
    eq, collector = aoi_simulator(), Collector()
    count = 0

    async def emit(records: Any) -> None:
        nonlocal count
        count += len(records)

    async with anyio.create_task_group() as tg:
        port = await tg.start(eq.serve)
        config = aoi_config(port, t3="10s")
        ctx = context(config, collector)
        await tg.start(HsmsAdapter(ctx).run, ctx)
        await collector.wait_for(lambda c: bool(c.events("connection_restored")), within=10)
        ctx.emit = emit
        sent = 0
        stop_at = time.perf_counter() + seconds

        async def sender() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at:
                assert await eq.send_event(CEID_BOARD_INSPECTED) == 0
                sent += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as senders:
            for _ in range(window):
                senders.start_soon(sender)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    print(f"emit  window {window:>2}: {sent / elapsed:,.0f} S6F11 reports/s acked ({sent} in {elapsed:.1f}s, "
          f"{count} records emitted; simulator and adapter on one core)")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_mqtt(events: int, window: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir=workdir)
        broker.start()
        received = 0
        lock = threading.Lock()
        first_restored = threading.Event()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            nonlocal received
            if b'"unit_inspected"' in msg.payload:
                with lock:
                    received += 1
            elif b'"connection_restored"' in msg.payload:
                first_restored.set()

        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        sub.on_message = on_message
        sub.on_connect = lambda c, *a: c.subscribe("#", qos=1)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()

        async def main() -> None:
            eq = aoi_simulator()
            async with anyio.create_task_group() as tg:
                port = await tg.start(eq.serve)
                equipment = aoi_config(port, t3="10s").model_dump(mode="json", exclude_defaults=True)
                equipment.update(adapter="hsms", id="aoi-1", type="aoi")
                config = gateway_config(workdir, broker.url, 0, equipment=[equipment],
                                        logging={"format": "json", "level": "warning"})
                daemon = Daemon(config, workdir / "daemon.log")
                daemon.start()
                assert daemon.process is not None
                try:
                    await anyio.to_thread.run_sync(first_restored.wait, 20)
                    cpu0 = _cpu_seconds(daemon.process.pid)
                    start = time.perf_counter()
                    remaining = events

                    async def sender() -> None:
                        nonlocal remaining
                        while remaining > 0:
                            remaining -= 1
                            assert await eq.send_event(CEID_BOARD_INSPECTED) == 0

                    async with anyio.create_task_group() as senders:
                        for _ in range(window):
                            senders.start_soon(sender)
                    acked = time.perf_counter() - start
                    with anyio.fail_after(120):
                        while received < events:  # noqa: ASYNC110 - counted on paho's thread
                            await anyio.sleep(0.01)
                    delivered = time.perf_counter() - start
                    cpu = _cpu_seconds(daemon.process.pid) - cpu0
                    print(f"mqtt  window {window:>2}: {events / delivered:,.0f} unit_inspected/s delivered to the "
                          f"subscriber ({events} events; all acked by the gateway after {acked:.1f}s, "
                          f"delivered after {delivered:.1f}s; gateway CPU {cpu / delivered:.2f} cores, "
                          f"{events / cpu:,.0f} reports per gateway CPU-second)")
                finally:
                    daemon.stop()
                    tg.cancel_scope.cancel()

        try:
            anyio.run(main)
        finally:
            sub.loop_stop()
            sub.disconnect()
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--events", type=int, default=10000)
    args = parser.parse_args()
    bench_codec(args.seconds)
    for window in (1, 8):
        anyio.run(bench_emit, args.seconds, window)
    for window in (1, 8, 64):
        bench_mqtt(args.events if window > 1 else min(args.events, 1000), window)


if __name__ == "__main__":
    main()
