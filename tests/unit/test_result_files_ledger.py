"""The processed-files ledger: durable across reopen, found by identity or content, pruned by age."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from emsedge.adapters.result_files.ledger import Ledger, LedgerEntry


def test_entries_survive_a_reopen_and_are_found_by_identity_and_by_content(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ict-1.ledger"
    ledger = Ledger(path)
    ledger.record([
        LedgerEntry("a.log", 10, 111, "aa" * 32, "processed", 2),
        LedgerEntry("b.log", 20, 222, "bb" * 32, "rejected", 0, "no BTEST"),
    ])
    ledger.close()
    ledger = Ledger(path)
    assert ledger.by_identity("a.log", 10, 111) == LedgerEntry("a.log", 10, 111, "aa" * 32, "processed", 2)
    assert ledger.by_identity("a.log", 10, 112) is None  # touched: not the same file any more
    rejected = ledger.by_hash("bb" * 32)
    assert rejected is not None and rejected.rejected and rejected.reason == "no BTEST"
    ledger.record([LedgerEntry("copy.log", 10, 333, "aa" * 32, "duplicate", 0)])
    first = ledger.by_hash("aa" * 32)
    assert first is not None and first.name == "a.log"  # the original, not the re-drop
    assert ledger.count() == 3 and ledger.count("duplicate") == 1
    ledger.close()


def test_old_entries_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    ledger.record([LedgerEntry("old.log", 1, 1, "01" * 32, "processed", 1)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE files SET processed_at = 0")
    ledger.record([LedgerEntry("new.log", 1, 2, "02" * 32, "processed", 1)])
    assert ledger.prune(older_than_s=3600) == 1
    assert ledger.by_hash("01" * 32) is None and ledger.by_hash("02" * 32) is not None
    ledger.close()
