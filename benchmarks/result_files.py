"""Result files: boards per second parsed, and parsed + emitted through a real Buffer, from a backlog.

A backlog of 10,000 i3070 logs (one board each, 60 analog measurements plus pins and shorts, as the
virtual ICT station writes them, 3 % failing) is written into a folder; then

  * parse only: read + parse every file (the parser's cost alone);
  * end to end: the real adapter (scan, settle 0, hash, parse, emit into a real SQLite Buffer, ledger
    write, move to the archive), the path a gateway takes after an outage of the tester share.

Prints boards/s and files/s, CPU seconds per 1,000 boards, and the peak RSS after each phase (the
process peak, so the second figure includes the first).

    .venv/bin/python benchmarks/result_files.py [--files 10000] [--components 60] [--sync full|normal]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import structlog

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.result_files.adapter import ResultFilesAdapter
from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.adapters.result_files.parsers import ParseOptions, parser_for
from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.schema import Record
from emsedge.simulate.ict import Component, IctStation
from emsedge.topics import Topics


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def components(n: int) -> tuple[Component, ...]:
    kinds = [("r", "A-RES", 4_700.0, 0.05), ("c", "A-CAP", 100e-9, 0.2), ("l", "A-IND", 10e-6, 0.1),
             ("d", "A-DIO", 0.65, 0.15)]
    return tuple(
        Component(f"{prefix}{100 + i}", tag, nominal, tol)
        for i, (prefix, tag, nominal, tol) in ((i, kinds[i % len(kinds)]) for i in range(n))
    )


def write_backlog(folder: Path, files: int, parts: int) -> int:
    station = IctStation(folder, rng=random.Random(7), fail_rate=0.03, retest_rate=0.0, components=components(parts))
    start = datetime(2026, 1, 14, 6, 0, tzinfo=UTC)
    for i in range(files):
        station.test_board(f"PCB-2026-{i:06d}", start + timedelta(seconds=40 * i))
    return sum(p.stat().st_size for p in folder.iterdir())


def parse_only(folder: Path) -> None:
    parse = parser_for("i3070")
    options = ParseOptions()
    t0, c0 = time.perf_counter(), cpu()
    boards = measurements = 0
    for path in sorted(folder.iterdir()):
        for board in parse(path.read_bytes(), options):
            boards += 1
            measurements += board.measurement_count
    wall, cpu_s = time.perf_counter() - t0, cpu() - c0
    print(f"parse only:  {boards:,} boards ({measurements:,} measurements) in {wall:.2f} s: "
          f"{boards / wall:,.0f} boards/s, {cpu_s / boards * 1000:.3f} CPU-s per 1,000 boards; "
          f"peak RSS {peak_rss_mb():,.0f} MB")


async def end_to_end(workdir: Path, folder: Path, files: int, sync: str) -> None:
    config = ResultFilesEquipment.model_validate({
        "id": "ict-1", "type": "ict", "adapter": "result_files", "path": folder, "pattern": "*.log",
        "format": "i3070", "timezone": "Europe/Berlin", "settle": 0, "archive": workdir / "done",
        "error": workdir / "error",
    })
    buffer = Buffer(
        BufferConfig(path=workdir / "buffer.db", max_bytes=8 << 30, sync=sync, min_free_bytes=0),  # type: ignore[arg-type]
        gateway="bench-gw",
        topics=Topics("ems/bench/smt/line-1"),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(buffer.run)

        async def emit(records: Sequence[Record]) -> None:
            await buffer.append(records)

        adapter = ResultFilesAdapter(config, AdapterContext(equipment=config, emit=emit),
                                     ledger_path=workdir / "ict-1.ledger")
        t0, c0 = time.perf_counter(), cpu()
        async with adapter:
            handled = 0
            while handled < files:
                handled += await adapter.scan_once()
        wall, cpu_s = time.perf_counter() - t0, cpu() - c0
        tg.cancel_scope.cancel()
    boards = adapter.stats.boards_emitted
    print(f"end to end:  {boards:,} boards from {adapter.stats.files_processed:,} files in {wall:.2f} s: "
          f"{boards / wall:,.0f} boards/s, {cpu_s / boards * 1000:.3f} CPU-s per 1,000 boards "
          f"(parse {adapter.stats.parse_seconds:.2f} s of it, buffer sync={sync}); peak RSS {peak_rss_mb():,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--components", type=int, default=60, help="analog measurements per board")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = workdir / "in"
        size = write_backlog(folder, args.files, args.components)
        print(f"backlog: {args.files:,} i3070 files, {size / 1e6:,.1f} MB; peak RSS {peak_rss_mb():,.0f} MB")
        parse_only(folder)
        anyio.run(end_to_end, workdir, folder, args.files, args.sync)


if __name__ == "__main__":
    main()
