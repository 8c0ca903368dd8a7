"""Exactly once for tester results: a real gateway SIGKILLed between the durable emit and the ledger write.

A result file's boards are made durable by the buffer first, then the file is recorded in the ledger, then
moved. A crash between the first two steps makes the restarted gateway read the file again and emit its
boards again, with the very ids of the first copy (uuid5 of gateway, equipment, file hash, board). The
buffer remembers every such own id (`emitted_ids`, same transaction as the records) and suppresses the
second copy: no row, no seq, counted in `emsedge_buffer_duplicates_suppressed_total`. MES receives each
board once.

The gateway is a real `emsedge run` process reading a real folder and publishing to a real mosquitto; the
first run is held at the exact step by tests/support/stall_before_ledger.py (the ledger write blocks, the
rest of the gateway runs on) and then SIGKILLed. Two cases: the first copy already reached MES (and was
deleted from the buffer) before the kill, and the first copy was still in the buffer (no broker).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, Mosquitto, Subscriber, free_port, seq_report
from support.daemon import Daemon, buffer_seqs, wait_until

from emsedge.buffer import file_stats

pytestmark = pytest.mark.timeout(300)

PANEL = (REPO / "tests" / "golden" / "result_files" / "i3070_panel_one_failing" / "input.log").read_bytes()
SERIALS = ["PCB-2026-000201", "PCB-2026-000202"]
PREFIX = "ems/plant-t/smt/line-t"
STALL = REPO / "tests" / "support" / "stall_before_ledger.py"


@dataclass
class StalledGateway(Daemon):
    """`emsedge run` that stops for good right before its first ledger write of a processed file."""

    marker: Path = Path()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(STALL), str(self.marker), "run", "-c", str(self.config)],
                stdout=log, stderr=log, env={**os.environ, **self.env},
            )


def _config(tmp_path: Path, broker_url: str, http_port: int | None = None) -> Path:
    config: dict[str, Any] = {
        "gateway": {"id": "test-gw", "site": "plant-t", "area": "smt", "line": "line-t"},
        "mqtt": {"url": broker_url, "qos": 1, "keepalive": "2s", "connect_timeout": "2s",
                 "backoff": {"initial": "100ms", "max": "300ms"}},
        "buffer": {"path": str(tmp_path / "state" / "buffer.db"), "linger": "5ms"},
        "http": {"listen": None if http_port is None else f"127.0.0.1:{http_port}"},
        "logging": {"format": "json", "level": "info"},
        "equipment": [{
            "id": "ict-1", "type": "ict", "adapter": "result_files", "path": str(tmp_path / "in"),
            "pattern": "*.log", "format": "i3070", "timezone": "Europe/Berlin",
            "poll_interval": "50ms", "settle": "200ms",
            "archive": str(tmp_path / "done"), "error": str(tmp_path / "error"),
        }],
    }
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _tested(mes: Subscriber) -> list[dict[str, Any]]:
    return [p for p in mes.payloads("/events") if p.get("event", {}).get("type") == "unit_tested"]


def _suppressed(http_port: int) -> float | None:
    """`emsedge_buffer_duplicates_suppressed_total` of the running gateway (None while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = re.search(r"^emsedge_buffer_duplicates_suppressed_total (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def _ledger_rows(tmp_path: Path) -> list[tuple[str, str, str, int]]:
    with sqlite3.connect(tmp_path / "state" / "result_files-ict-1.ledger") as db:
        return list(db.execute("SELECT name, sha256, outcome, boards FROM files ORDER BY rowid"))


@pytest.mark.parametrize("first_copy", ["published", "buffered"])
def test_a_sigkill_between_durable_emit_and_ledger_write_delivers_each_board_exactly_once(
    tmp_path: Path, mosquitto: Mosquitto, first_copy: str
) -> None:
    (tmp_path / "in").mkdir()
    db = tmp_path / "state" / "buffer.db"
    mes = Subscriber(mosquitto.port, f"{PREFIX}/#")
    # The first run publishes to the broker, or to a port nobody listens on (everything stays buffered).
    first_url = mosquitto.url if first_copy == "published" else f"mqtt://127.0.0.1:{free_port()}"
    stalled = StalledGateway(_config(tmp_path, first_url), tmp_path / "gateway.log", marker=tmp_path / "stalled")
    gateway = Daemon(tmp_path / "gateway.yaml", tmp_path / "gateway.log")
    http_port = free_port()
    try:
        stalled.start()
        (tmp_path / "in" / "panel.log.part").write_bytes(PANEL)
        os.rename(tmp_path / "in" / "panel.log.part", tmp_path / "in" / "panel.log")
        wait_until(lambda: stalled.marker.exists() or not stalled.alive(), 60)
        assert stalled.alive(), stalled.log()[-3000:]
        if first_copy == "published":
            # The forwarder runs on while the adapter is held: MES has the boards, and the buffer deleted them
            # (acknowledged), so nothing of the first run is left to be redelivered by seq.
            mes.wait_for(lambda _: sorted(p["event"]["serial"] for p in _tested(mes)) == SERIALS)
            wait_until(lambda: file_stats(db)["records"] == 0, 60)
        stalled.kill()  # SIGKILL: the boards are durable, the ledger knows nothing of the file
        assert (tmp_path / "in" / "panel.log").read_bytes() == PANEL
        assert not (tmp_path / "done").exists() or not list((tmp_path / "done").iterdir())
        assert _ledger_rows(tmp_path) == []  # so the restarted gateway reads the file again
        if first_copy == "buffered":
            assert _tested(mes) == []
        _config(tmp_path, mosquitto.url, http_port)

        gateway.start()
        wait_until((tmp_path / "done" / "panel.log").exists, 60)
        # Archived means the file's second emit returned: its outcome is in the buffer's stats by now.
        wait_until(lambda: _suppressed(http_port) is not None, 30)
        suppressed = _suppressed(http_port)
        mes.wait_for(lambda _: {p["event"]["serial"] for p in _tested(mes)} == set(SERIALS))
        assert gateway.stop() == 0, gateway.log()[-3000:]
        mes.sync()
    finally:
        stalled.kill()
        gateway.kill()
        mes.close()  # also fails the test if any message broke the contract

    tested = _tested(mes)
    ids: dict[str, list[str]] = defaultdict(list)
    bodies: dict[str, dict[str, Any]] = {}
    for p in tested:
        ids[p["event"]["serial"]].append(p["id"])
        bodies[p["event"]["serial"]] = p["event"]
    # Every board arrived exactly once: one message, one id, one seq per board; two boards, two ids.
    assert sorted(ids) == SERIALS
    assert all(len(v) == 1 for v in ids.values()), dict(ids)
    assert len(tested) == 2 and len({p["id"] for p in tested}) == 2 and len({p["seq"] for p in tested}) == 2
    assert [bodies[s]["result"] for s in SERIALS] == ["fail", "pass"]
    # No message at all came twice, and seqs are contiguous: every seq up to the last one the gateway
    # assigned arrived (nothing is left in the buffer), so a suppressed copy left no gap and no copy hides.
    everything = [p for p in mes.payloads() if "seq" in p]
    assert len({p["id"] for p in everything}) == len(everything)
    last, waiting = buffer_seqs(db)
    _, duplicates, missing = seq_report(everything, first=1, last=last, accounted=waiting)
    assert (duplicates, missing, waiting) == (0, [], set())
    # The file was read and emitted again after the restart (same ids), and the buffer suppressed both boards.
    assert suppressed == 2.0
    # The file was archived once, never copied or deleted, and the ledger holds it once.
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["panel.log"]
    assert (tmp_path / "done" / "panel.log").read_bytes() == PANEL
    assert list((tmp_path / "in").iterdir()) == []
    assert _ledger_rows(tmp_path) == [("panel.log", hashlib.sha256(PANEL).hexdigest(), "processed", 2)]
