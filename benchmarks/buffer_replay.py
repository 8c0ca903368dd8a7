"""Buffer throughput: append a backlog of 1,000,000 readings, then replay it (lease + ack).

Two shapes of the same 1,000,000 readings:
  * per message: telemetry messages of 10 readings each (100,000 messages), as a poll cycle produces;
  * per reading: one reading per message (1,000,000 messages), the worst case for per-row overhead.

Prints append messages/s and readings/s (several producers, the writer batches them), replay
(lease + settle, as the forwarder drives it) messages/s and readings/s, messages per CPU-second of each
phase (all threads of the process), the file size, the time to open the full file (start-up after a long
outage) and the peak RSS. Target (issue 2): a backlog of 1,000,000 buffered readings replayed at >= 50k
readings/s.

`--shape large` is the memory case of issue 11: messages of `--large-readings` readings (2,500 signals of
one machine at 500 ms) after an outage, replayed with leases of `--lease` messages bounded by
`--inflight-bytes` (buffer.max_inflight_bytes; 0 = no byte bound, the old behaviour); it prints the peak
RSS of the replay alone.

    .venv/bin/python benchmarks/buffer_replay.py [--sync full|normal] [--lease 500] [--shape both|large]
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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """VmHWM of this process in MB (reset with `reset_peak_rss`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


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

        start, cpu0 = time.perf_counter(), cpu_seconds()
        async with anyio.create_task_group() as producers:
            for _ in range(PRODUCERS):
                producers.start_soon(producer)
        append_s, append_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        appended = buf.stats().count
        tg.cancel_scope.cancel()

    start = time.perf_counter()
    buf = Buffer(cfg, gateway="line1-gw", topics=topics)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)  # everything on disk at open is backlog
        open_s = time.perf_counter() - start
        size = file_size(path)
        start, cpu0 = time.perf_counter(), cpu_seconds()
        replayed = 0
        while True:
            lease = await buf.lease("mqtt", lease_size)
            if not lease.messages:
                break
            await buf.settle(lease, acked=[m.seq for m in lease.messages])
            replayed += len(lease.messages)
        replay_s, replay_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        assert buf.stats().count == 0
        tg.cancel_scope.cancel()

    rpm = readings_per_message
    print(f"--- {messages:,} messages x {rpm} readings (sync={sync}, linger={linger * 1000:.0f} ms,"
          f" appends of {append_size} x {PRODUCERS} producers, leases of {lease_size})")
    print(f"append : {appended / append_s:10,.0f} messages/s  {appended * rpm / append_s:10,.0f} readings/s"
          f"  ({append_s:.1f} s, {appended / append_cpu:,.0f} messages per CPU-second)")
    verdict = "met" if replayed * rpm / replay_s >= 50_000 else "MISSED"
    print(f"replay : {replayed / replay_s:10,.0f} messages/s  {replayed * rpm / replay_s:10,.0f} readings/s"
          f"  ({replay_s:.1f} s, {replayed / replay_cpu:,.0f} messages per CPU-second)"
          f"  target >= 50,000 readings/s: {verdict}")
    print(f"file   : {size / 1e6:,.1f} MB for {appended:,} messages ({size / appended:,.0f} B/message);"
          f" open with full backlog {open_s:.2f} s")


async def run_large(workdir: Path, readings: int, messages: int, lease_size: int, inflight: int) -> None:
    path = workdir / f"buffer-large-{readings}.db"
    cfg = BufferConfig(path=path, max_bytes=8 << 30, min_free_bytes=0, linger=0.0)  # type: ignore[arg-type]
    topics = Topics("ems/plant-a/smt/line-1")
    buf = Buffer(cfg, gateway="line1-gw", topics=topics)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        for i in range(messages):
            await buf.append([make_record(i, readings)])
        size = buf.stats().bytes
        tg.cancel_scope.cancel()
    reset_peak_rss()
    before = peak_rss_mb()
    buf = Buffer(cfg, gateway="line1-gw", topics=topics)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        start, cpu0 = time.perf_counter(), cpu_seconds()
        replayed = 0
        while True:
            lease = await buf.lease("mqtt", lease_size, inflight or None)
            if not lease.messages:
                break
            await buf.settle(lease, acked=[m.seq for m in lease.messages])
            replayed += len(lease.messages)
        replay_s, replay_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        tg.cancel_scope.cancel()
    bound = f"{inflight / 2**20:.0f} MiB" if inflight else "none"
    print(f"--- {messages:,} messages x {readings} readings ({size / messages / 1e3:,.0f} kB each, backlog"
          f" {size / 1e6:,.0f} MB), leases of {lease_size}, byte bound {bound}")
    print(f"replay : {replayed / replay_s:10,.0f} messages/s  ({replay_s:.1f} s,"
          f" {replayed / replay_cpu:,.0f} messages per CPU-second)")
    print(f"RSS    : {before:,.0f} MB before the replay, peak during the replay {peak_rss_mb():,.0f} MB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sync", choices=["full", "normal"], default="full")
    parser.add_argument("--lease", type=int, default=500, help="messages per lease (publisher window slice)")
    parser.add_argument("--shape", choices=["message", "reading", "both", "large"], default="both")
    parser.add_argument("--large-readings", type=int, default=2500, help="readings per message (--shape large)")
    parser.add_argument("--large-messages", type=int, default=1200, help="backlog messages (--shape large)")
    parser.add_argument("--inflight-bytes", type=int, default=8 << 20,
                        help="lease byte bound for --shape large (0: none)")
    parser.add_argument("--append", type=int, default=1000, help="records per append call (a feeder's chunk)")
    parser.add_argument("--linger", type=float, default=0.02, help="buffer.linger in seconds")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory(prefix="emsedge-bench-") as tmp:
        if args.shape in ("message", "both"):
            await run_shape(Path(tmp), 10, args.sync, args.lease, args.append, args.linger)
        if args.shape in ("reading", "both"):
            await run_shape(Path(tmp), 1, args.sync, args.lease, args.append, args.linger)
        if args.shape == "large":
            await run_large(Path(tmp), args.large_readings, args.large_messages, args.lease, args.inflight_bytes)
            return
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    anyio.run(main)
