"""A result_files session in its own process, for SIGKILL tests.

    python result_files_child.py WORKDIR KILL_POINT

Reads WORKDIR/in, archives to WORKDIR/done, ledger WORKDIR/ledger.db. The emit path appends one JSON
line per record to WORKDIR/journal.jsonl and fsyncs it before returning: it stands in for the buffer's
durable append. At KILL_POINT the process writes WORKDIR/at-<point> and stops there, waiting to be killed:

* `before_emit`: the files are parsed, nothing is durable yet;
* `after_emit`: the events are durable, the ledger is not written;
* `after_ledger`: the ledger is written, the file not moved;
* `none`: runs normally.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.result_files.adapter import ResultFilesAdapter
from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.schema import Record


def stop_here(workdir: Path, point: str) -> None:
    (workdir / f"at-{point}").write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def write_journal(path: Path, records: Sequence[Record]) -> None:
    with open(path, "a", encoding="utf-8") as journal:
        for r in records:
            journal.write(json.dumps({"id": r.message_id, "ts": r.ts, "event": r.body["event"]}) + "\n")
        journal.flush()
        os.fsync(journal.fileno())


async def main(workdir: Path, kill_point: str) -> None:
    config = ResultFilesEquipment.model_validate({
        "id": "ict-1", "type": "ict", "adapter": "result_files", "path": workdir / "in", "pattern": "*.log",
        "format": "i3070", "timezone": "Europe/Berlin", "settle": 0, "poll_interval": "20ms",
        "archive": workdir / "done", "error": workdir / "error",
    })

    async def emit(records: Sequence[Record]) -> None:
        tested = [r for r in records if r.event_type == "unit_tested"]
        if tested and kill_point == "before_emit":
            stop_here(workdir, kill_point)
        write_journal(workdir / "journal.jsonl", records)
        if tested and kill_point == "after_emit":
            stop_here(workdir, kill_point)

    adapter = ResultFilesAdapter(config, AdapterContext(equipment=config, emit=emit), ledger_path=workdir / "ledger.db")
    async with adapter:
        if kill_point == "after_ledger":
            assert adapter.ledger is not None
            record = adapter.ledger.record

            def record_then_stop(entries: list) -> None:  # type: ignore[type-arg]
                record(entries)
                stop_here(workdir, kill_point)

            adapter.ledger.record = record_then_stop  # type: ignore[method-assign]
        while True:
            await adapter.scan_once()
            await anyio.sleep(config.poll_interval)


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), sys.argv[2])
