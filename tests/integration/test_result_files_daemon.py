"""End to end: tester result files -> `emsedge run` (a real daemon process) -> mosquitto -> MES.

One gateway reads a folder the test writes into as a tester would: a panel log appended in chunks, a
file renamed into place, an identical file dropped again, a corrupt file, a 200 MB file, the folder
vanishing and coming back, and a SIGKILL while a processed file is still waiting for its move to the
archive. MES must see exactly one `unit_tested` per board and test run (by message `id` and by source),
with the serial, verdict, failed tests, measurements, limits and UTC times the files hold.

The SIGKILL inside the emit-to-ledger window (events durable, ledger not yet written) is exercised with
a real daemon held at that step by tests/faults/test_result_files_exactly_once.py; here the kill comes
while the archive is unusable, after the ledger write, which a daemon can be held in from outside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, Mosquitto, Subscriber
from support.daemon import Daemon, wait_until

from emsedge.schema import EventMessage, FileRejectedEvent, UnitTestedEvent
from emsedge.simulate.ict import COMPONENTS, render_i3070

GOLDEN = REPO / "tests" / "golden" / "result_files" / "i3070_panel_one_failing"
PANEL = (GOLDEN / "input.log").read_bytes()
EXPECTED = [e["event"] for e in json.loads((GOLDEN / "expected.json").read_text())]
PREFIX = "ems/plant-t/smt/line-t"


def _board_log(serial: str, fail: bool = False) -> bytes:
    values = [(c, c.nominal * (3.0 if fail and i == 0 else 1.0)) for i, c in enumerate(COMPONENTS)]
    return render_i3070(serial, started=datetime(2026, 7, 1, 12, 0, 0), duration_s=31, measurements=values).encode()


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("in", "done", "error")}
    paths["in"].mkdir()
    return paths


def _config(tmp_path: Path, folders: dict[str, Path], broker_url: str) -> Path:
    config: dict[str, Any] = {
        "gateway": {"id": "test-gw", "site": "plant-t", "area": "smt", "line": "line-t"},
        "mqtt": {"url": broker_url, "qos": 1, "keepalive": "2s", "connect_timeout": "2s",
                 "backoff": {"initial": "100ms", "max": "500ms"}},
        "buffer": {"path": str(tmp_path / "state" / "buffer.db"), "linger": "5ms"},
        "http": {"listen": None},
        "logging": {"format": "json", "level": "info"},
        "equipment": [{
            "id": "ict-1", "type": "ict", "adapter": "result_files", "path": str(folders["in"]),
            "pattern": "*.log", "format": "i3070", "timezone": "Europe/Berlin",
            "poll_interval": "100ms", "settle": "400ms", "max_file_size": "1MiB",
            "archive": str(folders["done"]), "error": str(folders["error"]),
            "backoff": {"initial": "100ms", "max": "300ms"},
        }],
    }
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def mes(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port, f"{PREFIX}/#")
    yield sub
    sub.close()


def _events(mes: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [p for p in mes.payloads() if isinstance(p.get("event"), dict) and p["event"]["type"] == kind]


def _tested(mes: Subscriber) -> list[dict[str, Any]]:
    return _events(mes, "unit_tested")


def _serials(mes: Subscriber) -> list[str]:
    return sorted(p["event"]["serial"] for p in _tested(mes))


def _ledger_outcome(tmp_path: Path, name: str) -> str | None:
    """The outcome the adapter's ledger holds for a file (read-only, beside a running gateway)."""
    path = tmp_path / "state" / "result_files-ict-1.ledger"
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT outcome FROM files WHERE name = ? ORDER BY rowid DESC", (name,)).fetchone()
        except sqlite3.OperationalError:  # the adapter is still creating its table
            return None
    return None if row is None else str(row[0])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_result_files_reach_mes_once_per_board_through_chunks_renames_rejects_outages_and_a_kill(
    tmp_path: Path, folders: dict[str, Path], mosquitto: Mosquitto, mes: Subscriber
) -> None:
    inbox, done, error = folders["in"], folders["done"], folders["error"]
    gateway = Daemon(_config(tmp_path, folders, mosquitto.url), tmp_path / "gateway.log")
    gateway.start()
    try:
        mes.wait_for(lambda got: any(p.get("event", {}).get("type") == "connection_restored" for p in got))

        # A panel log appended in chunks, each within `settle` of the last: never read half-way.
        with open(inbox / "panel.log", "wb") as f:
            for start in range(0, len(PANEL), len(PANEL) // 4 + 1):
                f.write(PANEL[start:start + len(PANEL) // 4 + 1])
                f.flush()
                time.sleep(0.15)
        # Written under a name the pattern does not match, then renamed into place.
        (inbox / "b2.log.part").write_bytes(_board_log("PCB-E2E-0002", fail=True))
        os.rename(inbox / "b2.log.part", inbox / "b2.log")
        mes.wait_for(lambda _: _serials(mes) == ["PCB-2026-000201", "PCB-2026-000202", "PCB-E2E-0002"])
        wait_until(lambda: (done / "panel.log").exists() and (done / "b2.log").exists())
        assert not (inbox / "b2.log.part").exists()

        # The same panel dropped again under another name: recognised, moved, nothing emitted.
        (inbox / "panel-copy.log").write_bytes(PANEL)
        # A corrupt file and a 200 MB file (sparse, hashed in bounded memory, rejected unread).
        (inbox / "corrupt.log").write_bytes(PANEL[: len(PANEL) // 2] + b"{@BTEST|garbage\n")
        with open(inbox / "huge.log", "wb") as f:
            f.truncate(200 << 20)
        wait_until((done / "panel-copy.log").exists, 20)
        mes.wait_for(lambda _: len(_events(mes, "file_rejected")) == 2, 20)
        assert gateway.process is not None
        assert _peak_rss_mb(gateway.process.pid) < 150, "a 200 MB file must not be read into memory"
        rejected = {p["event"]["file"]: p["event"] for p in _events(mes, "file_rejected")}
        assert "larger than max_file_size" in rejected["huge.log"]["reason"]
        assert rejected["huge.log"]["size"] == 200 << 20
        assert rejected["corrupt.log"]["reason"] and rejected["corrupt.log"]["sha256"]
        wait_until(lambda: (error / "corrupt.log.reason.txt").exists() and (error / "huge.log").exists())
        assert (error / "huge.log").stat().st_size == 200 << 20  # never deleted
        assert len(_tested(mes)) == 3

        # The folder vanishes (a share unmounted) and comes back: lost once, restored, no restart.
        away = inbox.with_name("in-unmounted")
        inbox.rename(away)
        mes.wait_for(lambda got: len(_events(mes, "connection_lost")) == 1)
        away.rename(inbox)
        mes.wait_for(lambda got: len(_events(mes, "connection_restored")) == 2)
        (inbox / "b3.log").write_bytes(_board_log("PCB-E2E-0003"))
        mes.wait_for(lambda _: "PCB-E2E-0003" in _serials(mes))
        wait_until((done / "b3.log").exists)

        # The archive becomes unusable (a file where the folder was): events durable and published, the
        # file stays where it is; SIGKILL now, then restart with the archive back: moved, not re-sent.
        shutil.move(done, tmp_path / "done-away")
        done.write_text("not a folder")
        (inbox / "b4.log").write_bytes(_board_log("PCB-E2E-0004", fail=True))
        mes.wait_for(lambda _: "PCB-E2E-0004" in _serials(mes))
        assert (inbox / "b4.log").exists()
        # MES can have the events before the ledger row is written (the forwarder does not wait for it); a
        # kill inside that window is tests/faults/test_result_files_exactly_once.py's case, not this one.
        wait_until(lambda: _ledger_outcome(tmp_path, "b4.log") == "processed", 20)
        gateway.signal(signal.SIGKILL)
        assert gateway.process is not None
        gateway.process.wait()
        gateway.process = None
        done.unlink()
        shutil.move(tmp_path / "done-away", done)
        gateway.start()
        wait_until(lambda: (done / "b4.log").exists() and not (inbox / "b4.log").exists(), 20)
        (inbox / "b5.log").write_bytes(_board_log("PCB-E2E-0005"))
        mes.wait_for(lambda _: "PCB-E2E-0005" in _serials(mes))
        assert gateway.stop() == 0
    finally:
        gateway.kill()

    tested = _tested(mes)
    for message in [*tested, *_events(mes, "file_rejected")]:  # the documented wire models
        EventMessage.model_validate(message)
        model = UnitTestedEvent if message["event"]["type"] == "unit_tested" else FileRejectedEvent
        model.model_validate(message["event"])
    # Exactly one event per board and test run: by message id, and by source (file hash, board index).
    assert len({p["id"] for p in tested}) == len(tested)
    sources = [(p["event"]["source"]["sha256"], p["event"]["source"]["board_index"]) for p in tested]
    assert len(set(sources)) == len(sources)
    assert _serials(mes) == ["PCB-2026-000201", "PCB-2026-000202", "PCB-E2E-0002", "PCB-E2E-0003",
                             "PCB-E2E-0004", "PCB-E2E-0005"]
    by_serial = {p["event"]["serial"]: p for p in tested}
    # The panel: verdicts, failed tests, measurements with limits and units, tester-local times in UTC.
    for expected in EXPECTED:
        got = by_serial[expected["serial"]]
        assert got["equipment"] == "ict-1" and got["equipment_type"] == "ict"
        event = got["event"]
        for key in ("result", "raw_result", "test_method", "program", "started", "ended", "failed_tests",
                    "board_number", "panel_serial", "tests"):
            assert event[key] == expected[key], key
        assert event["source"]["file"] == "panel.log"
    failing = by_serial["PCB-2026-000201"]["event"]
    assert failing["result"] == "fail" and failing["failed_tests"] == ["1%r101"]
    r101 = next(t for t in failing["tests"] if t["name"] == "1%r101")["measurements"][0]
    assert (r101["value"], r101["unit"], r101["low"], r101["high"]) == (11822.0, "Ohm", 9500.0, 10500.0)
    assert failing["started"] == "2026-01-14T09:15:02.000Z"  # 10:15:02 in Berlin, winter
    generated = by_serial["PCB-E2E-0002"]["event"]
    assert generated["result"] == "fail" and generated["failed_tests"] == ["1%r101"]
    assert sum(len(t["measurements"]) for t in generated["tests"]) == len(COMPONENTS) + 3  # + shorts block
    assert generated["started"] == "2026-07-01T10:00:00.000Z"  # 12:00 in Berlin, summer
    assert by_serial["PCB-E2E-0004"]["event"]["result"] == "fail"
    # Nothing lost, nothing left behind, nothing deleted.
    assert sorted(p.name for p in done.iterdir()) == ["b2.log", "b3.log", "b4.log", "b5.log", "panel-copy.log",
                                                      "panel.log"]
    assert not list(inbox.iterdir())
    assert [e["event"]["type"] for e in mes.payloads() if e.get("event", {}).get("type", "").startswith("conn")] \
        == ["connection_restored", "connection_lost", "connection_restored", "connection_restored"]
