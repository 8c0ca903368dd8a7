"""Buffer throughput: append a backlog of 1,000,000 readings, then replay it (lease + ack).

Two shapes of the same 1,000,000 readings:
  * per message: telemetry messages of 10 readings each (100,000 messages), as a poll cycle produces;
  * per reading: one reading per message (1,000,000 messages), the worst case for per-row overhead.

Prints append messages/s and readings/s (several producers, the writer batches them), replay
(lease + ack, as the publisher drives it) messages/s and readings/s, the file size, the time to open
the full file (start-up after a long outage) and the peak RSS. Target (issue 2): a backlog of
1,000,000 buffered readings replayed at >= 50k readings/s.

    .venv/bin/python benchmarks/buffer_replay.py [--sync full|normal] [--lease 500] [--shape both]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import anyio
import structlog

from emsedge import schema
from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.topics import Topics

TOTAL_READINGS = 1_000_000
PRODUCERS = 4


def make_record(i: int, readings: int) -> schema.Record:
    ts = schema.utc_iso()
    values = [schema.reading(f"zone{k}_temp", 200.0 + (i + k) % 50 * 0.5, unit="Cel", ts=ts) for k in range(readings)]
    return schema.telemetry("reflow-1", "reflow_oven", values, ts=ts)


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.suffix != ".seq")


async def run_shape(
    workdir: Path, readings_per_message: int, sync: str, lease_size: int, append_size: int, linger: float
) -> None:
    messages = TOTAL_READINGS // readings_per_message
    path = workdir / f"buffer-{readings_per_message}.db"
    cfg = BufferConfig(path=path, max_bytes=8 << 30, sync=sync, min_free_bytes=0, linger=linger)  # type: ignore[arg-type]
    topics = Topics("ems/plant-a/smt/line-1")
    # pre-build the records: the benchmark measures the buffer, not the adapters
    template = [make_record(i, readings_per_message) for i in range(append_size)]

    buf = Buffer(cfg, gateway="line1-gw", topics=topics)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        per_producer = messages // PRODUCERS

        async def producer() -> None:
            for _ in range(per_producer // append_size):
                await buf.append(template)

        start = time.perf_counter()
        async with anyio.create_task_group() as producers:
            for _ in range(PRODUCERS):
                producers.start_soon(producer)
        append_s = time.perf_counter() - start
        appended = buf.stats().count
        tg.cancel_scope.cancel()

    start = time.perf_counter()
    buf = Buffer(cfg, gateway="line1-gw", topics=topics)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)  # everything on disk at open is backlog
        open_s = time.perf_counter() - start
        size = file_size(path)
        start = time.perf_counter()
        replayed = 0
        while True:
            lease = await buf.lease("mqtt", lease_size)
            if not lease.messages:
                break
            await buf.settle(lease, acked=[m.seq for m in lease.messages])
            replayed += len(lease.messages)
        replay_s = time.perf_counter() - start
        assert buf.stats().count == 0
        tg.cancel_scope.cancel()

    rpm = readings_per_message
    print(f"--- {messages:,} messages x {rpm} readings (sync={sync}, linger={linger * 1000:.0f} ms,"
          f" appends of {append_size} x {PRODUCERS} producers, leases of {lease_size})")
    print(f"append : {appended / append_s:10,.0f} messages/s  {appended * rpm / append_s:10,.0f} readings/s"
          f"  ({append_s:.1f} s)")
    verdict = "met" if replayed * rpm / replay_s >= 50_000 else "MISSED"
    print(f"replay : {replayed / replay_s:10,.0f} messages/s  {replayed * rpm / replay_s:10,.0f} readings/s"
          f"  ({replay_s:.1f} s)  target >= 50,000 readings/s: {verdict}")
    print(f"file   : {size / 1e6:,.1f} MB for {appended:,} messages ({size / appended:,.0f} B/message);"
          f" open with full backlog {open_s:.2f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sync", choices=["full", "normal"], default="full")
    parser.add_argument("--lease", type=int, default=500, help="messages per lease (publisher window slice)")
    parser.add_argument("--shape", choices=["message", "reading", "both"], default="both")
    parser.add_argument("--append", type=int, default=1000, help="records per append call (a feeder's chunk)")
    parser.add_argument("--linger", type=float, default=0.02, help="buffer.linger in seconds")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory(prefix="emsedge-bench-") as tmp:
        if args.shape in ("message", "both"):
            await run_shape(Path(tmp), 10, args.sync, args.lease, args.append, args.linger)
        if args.shape in ("reading", "both"):
            await run_shape(Path(tmp), 1, args.sync, args.lease, args.append, args.linger)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    anyio.run(main)
