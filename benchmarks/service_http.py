"""Cost of observing the gateway: /metrics and /healthz over HTTP with many pieces of equipment.

A scrape runs on the gateway's event loop, so its duration is time the loop cannot poll equipment.
Prints, for 10, 50 and 200 pieces of equipment: the /metrics body size, and the median and p99 time of a
full HTTP request (connect, request, response) for /metrics and /healthz, and the render time alone.

Run: `.venv/bin/python benchmarks/service_http.py [--requests 200]`. Bounded: a few seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import anyio

from emsedge.adapters.base import EquipmentHealth
from emsedge.service import GatewayState, metrics_text, serve_http


class Stats:
    count = 1234
    bytes = 5_000_000
    oldest_created = time.time() - 30
    evicted_total = 0
    dead_letters = 0
    writable = True
    last_error = None


def make_state(n: int) -> GatewayState:
    equipment = {}
    for i in range(n):
        health = EquipmentHealth(connected=i % 7 != 0, polls=10_000, values=400_000, reconnects=i % 3)
        for _ in range(50):
            health.good_read(40, random.uniform(0.002, 0.3))
        equipment[f"machine-{i:03d}"] = health
    state = GatewayState(
        gateway_id="bench", version="0", started_at="2026-01-01T00:00:00.000Z", equipment=equipment,
        equipment_info=dict.fromkeys(equipment, ("reflow_oven", "modbus")),
        buffer_stats=Stats, broker_connected=lambda: True, broker_url=lambda: "mqtt://127.0.0.1:1883",
    )
    for _ in range(1000):
        state.observe_publish_latency(random.uniform(0.01, 2))
    return state


async def request(port: int, path: str) -> float:
    started = time.perf_counter()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            while await stream.receive():
                pass
        except anyio.EndOfStream:
            pass
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000


async def main(requests: int) -> None:
    print(f"{'equipment':>9} {'metrics KiB':>11} {'render ms':>9} "
          f"{'/metrics p50/p99 ms':>20} {'/healthz p50/p99 ms':>20}")
    for n in (10, 50, 200):
        state = make_state(n)
        render = []
        for _ in range(20):
            t = time.perf_counter()
            body = metrics_text(state)
            render.append(time.perf_counter() - t)
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_http, "127.0.0.1:0", state)
            m = [await request(port, "/metrics") for _ in range(requests)]
            h = [await request(port, "/healthz") for _ in range(requests)]
            tg.cancel_scope.cancel()
        print(f"{n:>9} {len(body) / 1024:>11.1f} {statistics.median(render) * 1000:>9.2f} "
              f"{pct(m, 0.5):>9.2f}/{pct(m, 0.99):<10.2f} {pct(h, 0.5):>9.2f}/{pct(h, 0.99):<10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    anyio.run(main, parser.parse_args().requests)
