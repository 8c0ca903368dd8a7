"""Upgrade: a buffer file written by emsedge 0.1.0 (format 1, kept as SQL in tests/golden/buffer/) is opened
by the current buffer, which upgrades it in place: every waiting record keeps its seq, id and payload, the
dead letter stays, and new records continue the seq after the old ones."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import anyio
import pytest

from emsedge import buffer as buffer_module
from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.schema import reading, telemetry
from emsedge.topics import Topics

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "buffer"
TS = "2026-01-01T00:00:10.000Z"


def file_from_0_1_0(tmp_path: Path) -> Path:
    path = tmp_path / "buffer.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript((GOLDEN / "format-1-v0.1.0.sql").read_text())
    finally:
        conn.close()
    shutil.copyfile(GOLDEN / "format-1-v0.1.0.seq", tmp_path / "buffer.db.seq")
    return path


def meta(path: Path) -> dict[str, object]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_a_buffer_file_written_by_0_1_0_opens_upgraded_with_every_record_kept(tmp_path: Path) -> None:
    path = file_from_0_1_0(tmp_path)
    before = list(buffer_module.export(path))
    assert meta(path)["format"] == 1
    assert [r["seq"] for r in before] == [4, 5, 6, 7]

    buffer = Buffer(BufferConfig(path=path, linger=0, sync="normal"), gateway="line-pc-1",
                    topics=Topics("ems/plant-a/smt/line-1"))
    async with anyio.create_task_group() as tg:
        await tg.start(buffer.run)
        await buffer.append([telemetry("reflow-1", "reflow_oven", [reading("zone1_temp", 250.0, ts=TS)], TS)])
        tg.cancel_scope.cancel()

    assert meta(path)["format"] == buffer_module.FORMAT_VERSION  # upgraded in place (or already current)
    after = list(buffer_module.export(path))
    assert [r["seq"] for r in after[:4]] == [4, 5, 6, 7]
    for old, new in zip(before, after[:4], strict=True):
        assert (new["id"], new["topic"], new["payload"]) == (old["id"], old["topic"], old["payload"])
    assert after[4]["seq"] > 7  # the seq continues after the old records (the sidecar's reservation or more)
    assert json.loads(after[3]["payload"])["event"]["type"] == "unit_processed"
    dead = list(buffer_module.export(path, dead_letters=True))
    assert [d["seq"] for d in dead] == [3]
