"""Own ids: a record that names its id (`Record.message_id`, a tester result) is stored once per id.

The buffer remembers every own id it appended (`emitted_ids`, written in the same transaction as the
records) and suppresses a later record with the same id: not stored, no seq, counted. Telemetry (no own
id) never touches the table.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_buffer import FakeClock, config, rec, running

from emsedge import schema
from emsedge.buffer import export, file_stats, purge
from emsedge.buffer.store import ID_PRUNE_INTERVAL, ID_RETENTION, Store
from emsedge.topics import Topics

TOPICS = Topics("ems/plant-a/smt/line-1")
BOARD_1 = "6f1d4e0a-0c38-5b43-9d1e-0e5b9e1c2a01"
BOARD_2 = "6f1d4e0a-0c38-5b43-9d1e-0e5b9e1c2a02"


def board(message_id: str, serial: str = "PCB-1", result: str = "pass") -> schema.Record:
    record = schema.event("ict-1", "ict", "unit_tested", "2026-01-01T00:00:00.000Z", serial=serial, result=result)
    record.message_id = message_id
    return record


def stored(db: Path) -> list[dict[str, Any]]:
    """(seq, id, event) of every record on disk, loss announcements left out."""
    return [
        {"seq": r["seq"], "id": r["id"], "body": json.loads(r["payload"])}
        for r in export(db) if r["equipment"] != schema.GATEWAY_EQUIPMENT
    ]


def ids_on_disk(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM emitted_ids ORDER BY id")]


def store(db: Path, clock: FakeClock) -> Store:
    s = Store(config(db), gateway="line1-gw", topics=TOPICS, outputs=("mqtt",), clock=clock, wall_clock=clock)
    s.open()
    return s


@pytest.mark.asyncio
async def test_a_repeated_id_in_the_same_append_is_stored_once_the_first_copy_wins(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        result = await buf.append([board(BOARD_1), rec(), board(BOARD_1, result="fail"), board(BOARD_2)])
        assert (result.accepted, result.duplicates, result.refused) == (3, 1, 0)
        assert buf.stats().duplicates_suppressed == 1
        assert buf.stats().next_seq == 4
    rows = stored(db)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert [r["id"] for r in rows if r["id"] in (BOARD_1, BOARD_2)] == [BOARD_1, BOARD_2]
    assert rows[0]["body"]["event"]["result"] == "pass"
    assert ids_on_disk(db) == sorted([BOARD_1, BOARD_2])


def test_a_repeated_id_in_another_append_of_the_same_transaction_is_suppressed(tmp_path: Path) -> None:
    """Group commit: two producers' appends in one transaction; the second one's copy gets no seq."""
    s = store(tmp_path / "b.db", FakeClock())
    try:
        first, second = s.append([[board(BOARD_1)], [rec(), board(BOARD_1)]])
        assert (first.accepted, first.duplicates) == (1, 0)
        assert (second.accepted, second.duplicates) == (1, 1)
        assert s.next_seq == 3
    finally:
        s.close()


@pytest.mark.asyncio
async def test_a_repeated_id_in_a_later_append_is_suppressed_and_leaves_no_seq_gap(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.append([board(BOARD_1), board(BOARD_2)])
        result = await buf.append([board(BOARD_2), board(BOARD_1)])
        assert (result.accepted, result.duplicates) == (0, 2)
        await buf.append([rec()])
        lease = await buf.lease("mqtt", 10)
        assert buf.stats().duplicates_suppressed == 2
    assert [m.seq for m in lease.messages] == [1, 2, 3]
    assert [m.id for m in lease.messages][:2] == [BOARD_1, BOARD_2]


@pytest.mark.asyncio
async def test_a_repeated_id_after_a_restart_is_suppressed(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.append([board(BOARD_1)])
    async with running(db) as buf:  # the gateway restarted and its source re-emits what it had emitted
        result = await buf.append([board(BOARD_1), board(BOARD_2)])
        assert (result.accepted, result.duplicates) == (1, 1)
        assert buf.stats().duplicates_suppressed == 1
    assert [(r["seq"], r["id"]) for r in stored(db)] == [(1, BOARD_1), (2, BOARD_2)]


@pytest.mark.asyncio
async def test_a_repeated_id_is_suppressed_after_the_first_copy_was_delivered_and_deleted(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.append([board(BOARD_1)])
        lease = await buf.lease("mqtt", 10)
        await buf.settle(lease, acked=[m.seq for m in lease.messages])
        assert buf.stats().count == 0
        result = await buf.append([board(BOARD_1)])
        assert (result.accepted, result.duplicates) == (0, 1)
        assert buf.stats().count == 0
        assert buf.stats().next_seq == 2
        assert (await buf.lease("mqtt", 10)).messages == []
    assert stored(db) == []
    assert file_stats(db)["ids_remembered"] == 1


@pytest.mark.asyncio
async def test_telemetry_never_looks_up_or_writes_the_id_table(tmp_path: Path) -> None:
    s = store(tmp_path / "b.db", FakeClock())
    statements: list[str] = []
    try:
        assert s.conn is not None
        s.conn.set_trace_callback(statements.append)
        s.append([[rec(), rec("aoi-1")], [rec()]])
        s.conn.set_trace_callback(None)
    finally:
        s.close()
    assert statements and not [q for q in statements if "emitted_ids" in q]
    assert ids_on_disk(tmp_path / "b.db") == []


def test_ids_older_than_the_retention_are_pruned_when_idle_younger_ones_are_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "b.db"
    s = store(db, clock)
    try:
        s.append([[board(BOARD_1)]])
        clock.now += ID_RETENTION / 2
        s.append([[board(BOARD_2)]])
        s.housekeeping()  # pruned within the interval already: nothing to do
        assert ids_on_disk(db) == sorted([BOARD_1, BOARD_2])
        clock.now += ID_RETENTION / 2 + ID_PRUNE_INTERVAL
        s.housekeeping()
        assert ids_on_disk(db) == [BOARD_2]
        again_1, again_2 = s.append([[board(BOARD_1)], [board(BOARD_2)]])
        assert (again_1.accepted, again_2.duplicates) == (1, 1)
    finally:
        s.close()


def test_ids_are_pruned_inside_an_append_when_the_writer_is_never_idle(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "b.db"
    s = store(db, clock)
    try:
        s.append([[board(BOARD_1)]])
        clock.now += ID_RETENTION + ID_PRUNE_INTERVAL
        s.append([[board(BOARD_2)]])  # no housekeeping in between
        assert ids_on_disk(db) == [BOARD_2]
    finally:
        s.close()


def test_the_buffer_clock_ages_ids_so_a_restart_neither_forgets_nor_ages_them(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "b.db"
    s = store(db, clock)
    s.append([[board(BOARD_1)]])
    s.close()
    clock.now = 5.0  # a reboot: the monotonic clock starts again near zero
    s = store(db, clock)
    try:
        s.housekeeping()
        assert s.append([[board(BOARD_1)]])[0].duplicates == 1
    finally:
        s.close()


@pytest.mark.asyncio
async def test_a_format_2_file_without_the_id_table_gains_it_at_open(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.append([rec()])
    with sqlite3.connect(db) as conn:  # as an emsedge before the table wrote it
        conn.execute("DROP TABLE emitted_ids")
    assert file_stats(db)["ids_remembered"] == 0
    async with running(db) as buf:
        await buf.append([board(BOARD_1)])
        assert (await buf.append([board(BOARD_1)])).duplicates == 1
    assert file_stats(db)["format"] == 2
    assert ids_on_disk(db) == [BOARD_1]


@pytest.mark.asyncio
async def test_purge_keeps_the_remembered_ids(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.append([board(BOARD_1), rec()])
    assert purge(db) == 2
    assert file_stats(db)["ids_remembered"] == 1
    async with running(db) as buf:
        assert (await buf.append([board(BOARD_1)])).duplicates == 1
    assert stored(db) == []
