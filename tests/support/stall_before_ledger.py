"""`emsedge` with the result_files ledger write held: the fault-injection hook of the exactly-once test.

    python stall_before_ledger.py MARKER run -c CONFIG

Runs the gateway exactly as `emsedge run -c CONFIG` does, except that when the result_files adapter is about
to record a processed file in its ledger (the file's events are durable in the buffer by then: `emit()`
returned), the worker thread writes MARKER (the pid) and blocks there for good, before the ledger is
touched. The rest of the gateway keeps running (the forwarder publishes what is buffered) until the test
SIGKILLs the process: the crash lands exactly between the durable emit and the ledger write, the window
deterministic message ids exist for. The hook is in the test tree, not in the gateway.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from emsedge.adapters.result_files.ledger import Ledger, LedgerEntry
from emsedge.cli import main


def stall_before_processed_entries(marker: Path) -> None:
    record = Ledger.record

    def record_or_stall(self: Ledger, entries: list[LedgerEntry]) -> None:
        if any(e.outcome == "processed" for e in entries):
            marker.write_text(str(os.getpid()))
            threading.Event().wait()  # until SIGKILL
        record(self, entries)

    Ledger.record = record_or_stall  # type: ignore[method-assign]


if __name__ == "__main__":
    stall_before_processed_entries(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
