"""Exactly-once by `id` for tester results: a real gateway SIGKILLed between the durable emit and the ledger write.

A result file's boards are made durable by the buffer first, then the file is recorded in the ledger, then
moved. A crash between the first two steps makes the restarted gateway read the file again and emit its
boards again. That is allowed (at-least-once), but MES must be able to drop the second copy by `id`, so the
redelivery carries the very ids of the first (uuid5 of gateway, equipment, file hash, board), with new seqs.

The gateway is a real `emsedge run` process reading a real folder and publishing to a real mosquitto; the
first run is held at the exact step by tests/support/stall_before_ledger.py (the ledger write blocks, the
rest of the gateway runs on) and then SIGKILLed. Two cases: the first copy already reached MES before the
kill, and the first copy was still in the buffer (no broker) so both copies leave from the buffer.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, Mosquitto, Subscriber, free_port, seq_report
from support.daemon import Daemon, buffer_seqs, wait_until

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


def _config(tmp_path: Path, broker_url: str) -> Path:
    config: dict[str, Any] = {
        "gateway": {"id": "test-gw", "site": "plant-t", "area": "smt", "line": "line-t"},
        "mqtt": {"url": broker_url, "qos": 1, "keepalive": "2s", "connect_timeout": "2s",
                 "backoff": {"initial": "100ms", "max": "300ms"}},
        "buffer": {"path": str(tmp_path / "state" / "buffer.db"), "linger": "5ms"},
        "http": {"listen": None},
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


def _ledger_rows(tmp_path: Path) -> list[tuple[str, str, str, int]]:
    with sqlite3.connect(tmp_path / "state" / "result_files-ict-1.ledger") as db:
        return list(db.execute("SELECT name, sha256, outcome, boards FROM files ORDER BY rowid"))


@pytest.mark.parametrize("first_copy", ["published", "buffered"])
def test_a_sigkill_between_durable_emit_and_ledger_write_redelivers_each_board_with_its_first_id(
    tmp_path: Path, mosquitto: Mosquitto, first_copy: str
) -> None:
    (tmp_path / "in").mkdir()
    mes = Subscriber(mosquitto.port, f"{PREFIX}/#")
    # The first run publishes to the broker, or to a port nobody listens on (everything stays buffered).
    first_url = mosquitto.url if first_copy == "published" else f"mqtt://127.0.0.1:{free_port()}"
    stalled = StalledGateway(_config(tmp_path, first_url), tmp_path / "gateway.log", marker=tmp_path / "stalled")
    gateway = Daemon(tmp_path / "gateway.yaml", tmp_path / "gateway.log")
    try:
        stalled.start()
        (tmp_path / "in" / "panel.log.part").write_bytes(PANEL)
        os.rename(tmp_path / "in" / "panel.log.part", tmp_path / "in" / "panel.log")
        wait_until(lambda: stalled.marker.exists() or not stalled.alive(), 60)
        assert stalled.alive(), stalled.log()[-3000:]
        if first_copy == "published":  # the forwarder runs on while the adapter is held
            mes.wait_for(lambda _: sorted(p["event"]["serial"] for p in _tested(mes)) == SERIALS)
        stalled.kill()  # SIGKILL: the boards are durable, the ledger knows nothing of the file
        assert (tmp_path / "in" / "panel.log").read_bytes() == PANEL
        assert not (tmp_path / "done").exists() or not list((tmp_path / "done").iterdir())
        assert _ledger_rows(tmp_path) == []
        if first_copy == "buffered":
            assert _tested(mes) == []
            _config(tmp_path, mosquitto.url)

        gateway.start()
        wait_until((tmp_path / "done" / "panel.log").exists, 60)
        mes.wait_for(lambda _: len(_tested(mes)) >= 4)
        assert gateway.stop() == 0, gateway.log()[-3000:]
        mes.sync()
    finally:
        stalled.kill()
        gateway.kill()
        mes.close()  # also fails the test if any message broke the contract

    tested = _tested(mes)
    ids: dict[str, set[str]] = defaultdict(set)
    seqs: dict[str, set[int]] = defaultdict(set)
    bodies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in tested:
        serial = p["event"]["serial"]
        ids[serial].add(p["id"])
        seqs[serial].add(p["seq"])
        bodies[serial].append(p["event"])
    # Every board arrived, twice (first run, re-emit after the restart); every copy of a board has the same
    # id and the same event, and a re-emitted copy got a new seq. Two boards, two ids: MES keeps two results.
    assert sorted(ids) == SERIALS
    assert all(len(v) == 1 for v in ids.values()), dict(ids)
    assert len(set().union(*ids.values())) == 2
    assert all(len(v) >= 2 for v in seqs.values()), dict(seqs)
    assert all(all(b == bs[0] for b in bs) for bs in bodies.values())
    # Duplicates by id are possible, gaps by seq are not: every seq up to the last assigned one arrived.
    last, waiting = buffer_seqs(tmp_path / "state" / "buffer.db")
    _, _, missing = seq_report([p for p in mes.payloads() if "seq" in p], first=1, last=last, accounted=waiting)
    assert missing == [] and waiting == set()
    # The file was archived once, never copied or deleted, and the ledger holds it once.
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["panel.log"]
    assert (tmp_path / "done" / "panel.log").read_bytes() == PANEL
    assert list((tmp_path / "in").iterdir()) == []
    assert _ledger_rows(tmp_path) == [("panel.log", hashlib.sha256(PANEL).hexdigest(), "processed", 2)]
