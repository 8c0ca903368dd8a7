"""SIGKILL of a result_files session at each step between parse and archive, then a restart.

The emit path of the child process is an fsynced journal (the buffer's durable append stands in), so
the kill lands at the exact step. The end-to-end version (a real daemon, its buffer, a real broker) is
tests/faults/test_result_files_exactly_once.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import REPO

CHILD = REPO / "tests" / "support" / "result_files_child.py"
PANEL = (REPO / "tests" / "golden" / "result_files" / "i3070_panel_one_failing" / "input.log").read_bytes()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _start(workdir: Path, kill_point: str) -> subprocess.Popen[bytes]:
    with open(workdir / f"child-{kill_point}.log", "wb") as log:
        return subprocess.Popen([sys.executable, str(CHILD), str(workdir), kill_point],
                                stdout=subprocess.DEVNULL, stderr=log)


def _journal(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tested(workdir: Path) -> list[dict[str, Any]]:
    return [e["event"] for e in _journal(workdir) if e["event"]["type"] == "unit_tested"]


@pytest.mark.parametrize(("kill_point", "deliveries"), [("before_emit", 1), ("after_ledger", 1), ("after_emit", 2)])
def test_sigkill_between_parse_and_archive_loses_nothing_and_moves_only_after_durability(
    tmp_path: Path, kill_point: str, deliveries: int
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "panel.log").write_bytes(PANEL)
    child = _start(tmp_path, kill_point)
    try:
        marker = tmp_path / f"at-{kill_point}"
        _wait(lambda: marker.exists() or child.poll() is not None, f"the child at {kill_point}")
        assert child.poll() is None, (tmp_path / f"child-{kill_point}.log").read_text()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert (tmp_path / "in" / "panel.log").exists(), "moved before the restart"
    assert not (tmp_path / "done").exists()

    restarted = _start(tmp_path, "none")
    try:
        _wait((tmp_path / "done" / "panel.log").exists, "the archive after the restart")
    finally:
        restarted.kill()
        restarted.wait()
    events = _tested(tmp_path)
    by_source = Counter((e["source"]["sha256"], e["source"]["board_index"]) for e in events)
    assert sorted(e["serial"] for e in events) == sorted(["PCB-2026-000201", "PCB-2026-000202"] * deliveries)
    # every board delivered the same number of times; a redelivery carries the same message id and source
    assert set(by_source.values()) == {deliveries} and len(by_source) == 2
    ids = {(r["event"]["source"]["board_index"], r["id"]) for r in _journal(tmp_path)
           if r["event"]["type"] == "unit_tested"}
    assert len(ids) == 2 and {index for index, _ in ids} == {0, 1}, ids
    assert not (tmp_path / "in" / "panel.log").exists()
    assert (tmp_path / "done" / "panel.log").read_bytes() == PANEL
