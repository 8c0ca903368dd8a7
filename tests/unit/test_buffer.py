"""Unit tests of the durable buffer: every method and invariant, on a real SQLite file in tmp_path."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import emsedge.buffer.store as buffer_module
from emsedge import schema
from emsedge.buffer import Buffer, export, file_stats, purge
from emsedge.buffer.store import Store
from emsedge.config import BufferConfig
from emsedge.errors import BufferError
from emsedge.topics import Topics

TOPICS = Topics("ems/plant-a/smt/line-1")


def rec(equipment: str = "oven-1", value: float = 1.0, ts: str = "2026-01-01T00:00:00.000Z") -> schema.Record:
    return schema.telemetry(equipment, "reflow_oven", [schema.reading("zone1", value, unit="Cel", ts=ts)], ts=ts)


def config(path: Path, **overrides: Any) -> BufferConfig:
    values: dict[str, Any] = {"path": path, "min_free_bytes": 0, "linger": 0}
    values.update(overrides)
    return BufferConfig(**values)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(path: Path, **kwargs: Any) -> AsyncIterator[Buffer]:
    clock = kwargs.pop("clock", None)
    wall = kwargs.pop("wall_clock", None)
    extra: dict[str, Any] = {}
    if clock is not None:
        extra["clock"] = clock
    if wall is not None:
        extra["wall_clock"] = wall
    outputs = kwargs.pop("outputs", ("mqtt",))
    buf = Buffer(config(path, **kwargs), gateway="line1-gw", topics=TOPICS, outputs=outputs, **extra)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        try:
            yield buf
        finally:
            tg.cancel_scope.cancel()


async def fill(buf: Buffer, n: int, equipment: str = "oven-1") -> None:
    await buf.append([rec(equipment, float(i)) for i in range(n)])


def seqs_on_disk(path: Path) -> list[int]:
    """Seqs of the records on disk (pending loss announcements, equipment `_gateway`, left out)."""
    return [r["seq"] for r in export(path) if r["equipment"] != schema.GATEWAY_EQUIPMENT]


@pytest.mark.asyncio
async def test_append_is_durable_a_reopened_buffer_sees_the_records(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    async with running(db) as buf:
        result = await buf.append([rec(), rec("aoi-1")])
        assert result.accepted == 2
        assert result.evicted == 0
    async with running(db) as buf:
        assert buf.stats().count == 2
        lease = await buf.lease("mqtt", 10)
    assert [m.equipment for m in lease.messages] == ["oven-1", "aoi-1"]


@pytest.mark.asyncio
async def test_payload_is_the_encoded_envelope_with_id_seq_gateway_and_topic(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await buf.append([rec(), schema.event("oven-1", "reflow_oven", "connection_lost", reason="timed out")])
        buf.begin_replay("mqtt")  # mark = 2: both are backlog now, but with replay_rate None order is kept
        lease = await buf.lease("mqtt", 10)
    telemetry, event = (json.loads(m.payload) for m in lease.messages)
    assert telemetry["seq"] == 1
    assert event["seq"] == 2
    assert telemetry["gateway"] == "line1-gw"
    assert telemetry["id"] == lease.messages[0].id
    assert telemetry["readings"][0]["value"] == 1.0
    assert lease.messages[0].topic == "ems/plant-a/smt/line-1/oven-1/telemetry"
    assert lease.messages[1].topic == "ems/plant-a/smt/line-1/oven-1/events"
    assert event["event"] == {"type": "connection_lost", "reason": "timed out"}


@pytest.mark.asyncio
async def test_a_record_that_names_its_own_id_keeps_it_and_a_repeat_is_suppressed(tmp_path: Path) -> None:
    """`Record.message_id` is the envelope id as given (deterministic ids of re-emitted data); records without
    one get fresh uuid4s. The same id appended again (a re-emit after a crash) is not stored and gets no
    seq: its first copy is durable already (more cases in test_buffer_ids.py)."""
    named = "0f8b2c1e-5d3a-5e6f-9a7b-1c2d3e4f5a6b"
    db = tmp_path / "b.db"
    async with running(db) as buf:
        first = schema.event("ict-1", "ict", "file_rejected", file="a.log", reason="r", line=None, sha256="x", size=1)
        first.message_id = named
        await buf.append([rec(), first, rec()])
    async with running(db) as buf:  # a restart, then the same record again
        again = schema.event("ict-1", "ict", "file_rejected", file="a.log", reason="r", line=None, sha256="x", size=1)
        again.message_id = named
        result = await buf.append([again, rec()])
        assert (result.accepted, result.duplicates) == (1, 1)
        lease = await buf.lease("mqtt", 10)
    payloads = [json.loads(m.payload) for m in lease.messages]
    assert [p["seq"] for p in payloads] == [1, 2, 3, 4]
    assert [m.id for m in lease.messages] == [p["id"] for p in payloads]
    assert payloads[1]["id"] == named
    assert [p["id"] for p in payloads].count(named) == 1
    drawn = {payloads[0]["id"], payloads[2]["id"], payloads[3]["id"]}
    assert len(drawn) == 3 and named not in drawn
    assert all(uuid.UUID(i).version == 4 for i in drawn)


@pytest.mark.asyncio
async def test_seq_is_strictly_increasing_and_continues_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 3)
        await fill(buf, 2)
    async with running(db) as buf:
        await fill(buf, 2)
        assert buf.stats().next_seq == 8
    assert seqs_on_disk(db) == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.asyncio
async def test_seq_is_never_reused_even_when_every_row_was_acked(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 5)
        lease = await buf.lease("mqtt", 10)
        await buf.settle(lease, acked=[m.seq for m in lease.messages])
        assert buf.stats().count == 0
    async with running(db) as buf:
        await fill(buf, 1)
    assert seqs_on_disk(db) == [6]


@pytest.mark.asyncio
async def test_a_fresh_file_continues_from_the_seq_sidecar_when_the_database_vanished(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 5)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240 - test set-up between two buffer runs
    with capture_logs() as logs:
        async with running(db) as buf:
            await fill(buf, 1)
    (seq,) = seqs_on_disk(db)
    assert seq > 5
    assert any(e["event"] == "buffer_seq_continued_from_sidecar" for e in logs)


@pytest.mark.asyncio
async def test_ack_deletes_the_records_and_updates_counts(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 4)
        lease = await buf.lease("mqtt", 4)
        await buf.settle(lease, acked=[1, 2])
        stats = buf.stats()
        assert stats.count == 2
        assert stats.leased == 2
        await buf.settle(lease, acked=[3, 4])
        stats = buf.stats()
        assert stats.count == 0
        assert stats.bytes == 0
        assert stats.leased == 0
        assert stats.oldest_created is None
    assert seqs_on_disk(db) == []


@pytest.mark.asyncio
async def test_ack_ignores_seqs_that_are_not_in_the_lease(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 4)
        lease = await buf.lease("mqtt", 2)
        await buf.settle(lease, acked=[3, 4])
        assert buf.stats().count == 4


@pytest.mark.asyncio
async def test_nack_returns_records_in_order_with_attempts_counted(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 6)
        first = await buf.lease("mqtt", 3)
        second = await buf.lease("mqtt", 2)
        assert [m.seq for m in second.messages] == [4, 5]
        await buf.settle(first, retry=[2, 3])
        await buf.settle(first, acked=[1])
        again = await buf.lease("mqtt", 10)
    assert [m.seq for m in again.messages] == [2, 3, 6]
    assert [m.attempts for m in again.messages] == [1, 1, 0]


@pytest.mark.asyncio
async def test_leases_never_hand_out_the_same_record_twice(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 50)
        seen: list[int] = []
        for _ in range(8):
            seen += [m.seq for m in (await buf.lease("mqtt", 7)).messages]
        assert sorted(seen) == list(range(1, 51))
        assert len(seen) == 50
        assert (await buf.lease("mqtt", 5)).messages == []
        assert buf.stats().leased == 50


@pytest.mark.asyncio
async def test_settling_a_stale_lease_cannot_put_back_what_a_newer_lease_holds(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 5)
        old = await buf.lease("mqtt", 3)
        await buf.settle(old, retry=[1, 2, 3])
        lease = await buf.lease("mqtt", 10)
        assert [m.seq for m in lease.messages] == [1, 2, 3, 4, 5]
        await buf.settle(old, retry=[1], acked=[2])  # belongs to the newer lease now: ignored
        assert buf.stats().count == 5
        assert [m.seq for m in (await buf.lease("mqtt", 10)).messages] == []


@pytest.mark.asyncio
async def test_eviction_drops_the_oldest_first_and_counts_per_equipment(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db, max_bytes=4000) as buf:
        await buf.append([rec("oven-1", float(i), ts=f"2026-01-01T00:00:0{i}.000Z") for i in range(3)])
        await buf.append([rec("aoi-1", float(i)) for i in range(3)])
        size = buf.stats().bytes // 6
        per_record_cap = 4000 // size
        result = await buf.append([rec("spi-1") for _ in range(per_record_cap)])
        stats = buf.stats()
    assert result.evicted == 6  # everything older had to go, nothing newer
    assert result.evicted_by_equipment == {"oven-1": 3, "aoi-1": 3}
    assert result.evicted_first_ts == "2026-01-01T00:00:00.000Z"
    assert stats.bytes <= 4000
    assert stats.evicted_total == 6
    assert seqs_on_disk(db) == list(range(7, 7 + per_record_cap))


@pytest.mark.asyncio
async def test_eviction_keeps_the_byte_cap_and_the_counters_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db, max_bytes=3000) as buf:
        for i in range(40):
            await buf.append([rec("oven-1" if i % 2 else "aoi-1", float(i))])
            assert buf.stats().bytes <= 3000
        before = buf.stats()
    on_disk = seqs_on_disk(db)
    announced = {r["seq"] for r in export(db) if r["equipment"] == schema.GATEWAY_EQUIPMENT}
    records = [s for s in range(1, before.next_seq) if s not in announced]
    assert len(records) == 40
    assert on_disk == records[len(records) - len(on_disk) :]  # a suffix: eviction took a prefix
    assert before.evicted_total == 40 - len(on_disk)
    async with running(db, max_bytes=3000) as buf:
        after = buf.stats()
    assert after.evicted_total == before.evicted_total
    assert after.evicted_by_equipment == before.evicted_by_equipment
    assert file_stats(db)["evicted_total"] == before.evicted_total


@pytest.mark.asyncio
async def test_a_record_larger_than_the_cap_is_evicted_at_once_and_reported(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db", max_bytes=200) as buf:
        result = await buf.append([rec()])
        assert (result.accepted, result.evicted) == (1, 1)
        assert buf.stats().count == 0


@pytest.mark.asyncio
async def test_max_age_evicts_old_records_on_append_and_when_idle(tmp_path: Path) -> None:
    wall = FakeClock(1_000_000.0)
    async with running(tmp_path / "b.db", max_age=60, clock=wall) as buf:
        await fill(buf, 3, "oven-1")
        wall.now += 30
        await fill(buf, 2, "aoi-1")
        wall.now += 40  # the oven records are 70 s old, the aoi ones 40 s
        result = await buf.append([rec("spi-1")])
        assert result.evicted_by_equipment == {"oven-1": 3}
        wall.now += 30  # aoi records now 70 s old: idle housekeeping evicts them within ~1 s
        with anyio.fail_after(5):
            while buf.stats().count != 1:  # noqa: ASYNC110 - polling a sync stats() snapshot
                await anyio.sleep(0.05)
        carried = await buf.append([rec("spi-1")])  # housekeeping evictions are reported with the next append
        assert carried.evicted_by_equipment == {"aoi-1": 2}
        assert buf.stats().evicted_total == 5


@pytest.mark.asyncio
async def test_everything_on_disk_at_open_is_replayed_and_later_appends_are_live(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 2)
    async with running(db) as buf:
        await fill(buf, 1)
        stats = buf.stats()
        assert stats.backlog == 2
        lease = await buf.lease("mqtt", 10)
    assert [(m.seq, m.replayed) for m in lease.messages] == [(1, True), (2, True), (3, False)]
    assert json.loads(lease.messages[0].payload)["replayed"] is True
    assert "replayed" not in json.loads(lease.messages[2].payload)
    assert json.loads(lease.messages[0].payload)["ts"] == "2026-01-01T00:00:00.000Z"


@pytest.mark.asyncio
async def test_begin_replay_turns_everything_appended_so_far_into_backlog(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 3)
        buf.begin_replay("mqtt")
        await fill(buf, 1)
        assert buf.stats().backlog == 3
        lease = await buf.lease("mqtt", 10)
        assert [m.replayed for m in lease.messages] == [True, True, True, False]
        await buf.settle(lease, acked=[1, 2])
        assert buf.stats().backlog == 1


@pytest.mark.asyncio
async def test_replay_rate_lets_live_records_through_first_and_meters_the_backlog(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 30)
    clock = FakeClock()
    async with running(db, replay_rate=5.0, clock=clock) as buf:
        await fill(buf, 3)  # live: seqs 31..33
        first = await buf.lease("mqtt", 20)
        assert [m.seq for m in first.messages] == [31, 32, 33, 1, 2, 3, 4, 5]  # live, then a 5-token burst
        assert (await buf.lease("mqtt", 20)).messages == []  # bucket empty, no live records
        clock.now += 1.0
        second = await buf.lease("mqtt", 20)
        assert [m.seq for m in second.messages] == [6, 7, 8, 9, 10]
        clock.now += 0.2
        assert [m.seq for m in (await buf.lease("mqtt", 20)).messages] == [11]


@pytest.mark.asyncio
async def test_without_replay_rate_leasing_is_strictly_oldest_first(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 3)
    async with running(db) as buf:
        await fill(buf, 2)
        lease = await buf.lease("mqtt", 4)
    assert [m.seq for m in lease.messages] == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_dead_letter_moves_records_aside_counts_and_logs_them(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 3)
        lease = await buf.lease("mqtt", 3)
        with capture_logs() as logs:
            await buf.settle(lease, dead=[(2, "PUBACK reason 0x97 payload format invalid")])
        stats = buf.stats()
        assert stats.dead_letters == 1
        assert stats.count == 2
        assert stats.leased == 2
        await buf.settle(lease, acked=[1, 3])
    (line,) = [e for e in logs if e["event"] == "buffer_dead_lettered"]
    assert line["equipment"] == ["oven-1"]
    assert "0x97" in line["reason"]
    (dead,) = list(export(db, dead_letters=True))
    assert dead["seq"] == 2
    assert dead["reason"].startswith("PUBACK")
    assert json.loads(dead["payload"])["seq"] == 2
    assert file_stats(db)["dead_letters_total"] == 1


@pytest.mark.asyncio
async def test_wait_for_messages_wakes_on_append_and_times_out_when_empty(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        start = anyio.current_time()
        await buf.wait_for_messages("mqtt", 0.1)
        assert anyio.current_time() - start >= 0.09
        async with anyio.create_task_group() as tg:
            tg.start_soon(fill, buf, 1)
            with anyio.fail_after(2):
                await buf.wait_for_messages("mqtt", 10)
        assert (await buf.lease("mqtt", 1)).messages


@pytest.mark.asyncio
async def test_wait_for_messages_sleeps_until_the_next_replay_token(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 5)
    async with running(db, replay_rate=2.0) as buf:
        assert len((await buf.lease("mqtt", 100)).messages) == 2  # burst of one second at 2/s
        start = anyio.current_time()
        await buf.wait_for_messages("mqtt", 5)
        waited = anyio.current_time() - start
        assert 0.3 <= waited <= 1.5
        assert len((await buf.lease("mqtt", 100)).messages) == 1


@pytest.mark.asyncio
async def test_concurrent_appends_share_write_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = Store.append

    def counting(self: Store, batch: list[Any]) -> Any:
        calls.append(sum(len(records) for records in batch))
        return original(self, batch)

    monkeypatch.setattr(Store, "append", counting)
    async with running(tmp_path / "b.db", linger=0.05) as buf:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(buf.append, [rec(value=float(i))])
        assert buf.stats().count == 200
    assert sum(calls) == 200
    assert len(calls) <= 5


@pytest.mark.asyncio
async def test_a_lone_producer_is_not_held_up_by_linger(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db", linger=0.5) as buf:
        start = anyio.current_time()
        for i in range(20):
            await buf.append([rec(value=float(i))])
        elapsed = anyio.current_time() - start
    assert elapsed < 3.0  # 20 x 0.5 s if every append waited out the linger


@pytest.mark.asyncio
async def test_low_free_disk_turns_appends_into_backpressure_until_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 1 << 20}
    monkeypatch.setattr(buffer_module, "_free_disk", lambda _d: free["bytes"])
    with capture_logs() as logs:
        async with running(tmp_path / "b.db", min_free_bytes=64 << 20) as buf:
            done: list[int] = []

            async def producer() -> None:
                done.append((await buf.append([rec(), rec()])).accepted)

            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                await anyio.sleep(0.3)
                stats = buf.stats()
                assert done == []
                assert not stats.writable
                assert stats.queued == 2
                assert "min_free_bytes" in (stats.last_error or "")
                free["bytes"] = 1 << 30
            assert done == [2]
            assert buf.stats().writable
            assert buf.stats().count == 2
    events = [e["event"] for e in logs]
    assert events.count("buffer_low_disk_backpressure") == 1  # once, not per retry
    assert events.count("buffer_write_recovered") == 1


@pytest.mark.asyncio
async def test_shutdown_commits_what_is_already_queued(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    buf = Buffer(config(db, linger=5.0), gateway="gw", topics=TOPICS)
    results: list[int] = []

    async def producer() -> None:
        results.append((await buf.append([rec()])).accepted)

    async with anyio.create_task_group() as outer, anyio.create_task_group() as tg:
        await tg.start(buf.run)
        for _ in range(5):
            outer.start_soon(producer)
        with anyio.fail_after(2):
            while buf.stats().queued < 5:  # noqa: ASYNC110 - polling a sync stats() snapshot
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()  # the writer is lingering: shutdown must still commit the batch
    assert results == [1] * 5
    assert len(seqs_on_disk(db)) == 5


@pytest.mark.asyncio
async def test_a_second_gateway_cannot_open_a_buffer_in_use(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db):
        other = Buffer(config(db), gateway="gw", topics=TOPICS)
        with pytest.raises(BufferError, match="in use"):
            await other.run()


@pytest.mark.asyncio
async def test_append_before_run_is_a_clear_error(tmp_path: Path) -> None:
    buf = Buffer(config(tmp_path / "b.db"), gateway="gw", topics=TOPICS)
    with pytest.raises(BufferError, match="not running"):
        await buf.append([rec()])


@pytest.mark.asyncio
async def test_purge_empties_the_file_but_keeps_the_seq(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 4)
        lease = await buf.lease("mqtt", 1)
        await buf.settle(lease, dead=[(m.seq, "test") for m in lease.messages])
    assert purge(db, dead_letters_only=True) == 1
    assert len(seqs_on_disk(db)) == 3
    assert purge(db) == 3
    assert file_stats(db)["records"] == 0
    assert file_stats(db)["announcements_pending"] == 1  # the dead letter's announcement (seq 5) is kept
    async with running(db) as buf:
        await fill(buf, 1)
    assert seqs_on_disk(db) == [6]


def test_offline_helpers_refuse_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match="no buffer file"):
        file_stats(tmp_path / "nope.db")


# ---------------------------------------------------------------------------------------------------
# One owner, settle, outputs, loss accounting (issues 10 and 11)


def announcements(path: Path) -> list[dict[str, Any]]:
    """The pending `buffer_dropped` announcements on disk, as their event bodies (with their seq)."""
    return [
        {"seq": r["seq"], **json.loads(r["payload"])["event"]}
        for r in export(path)
        if r["equipment"] == schema.GATEWAY_EQUIPMENT
    ]


@pytest.mark.asyncio
async def test_every_command_runs_in_the_one_owner_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading  # noqa: PLC0415

    threads: set[str] = set()
    for name in ("append", "lease", "settle", "count_loss", "housekeeping"):
        original = getattr(Store, name)

        def spy(self: Store, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            threads.add(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Store, name, spy)
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 3)
        lease = await buf.lease("mqtt", 3)
        await buf.settle(lease, acked=[1], retry=[2], dead=[(3, "refused")])
        await buf.count_loss("oven-1", "opcua_queue_overflow", 4)
    assert threads == {"emsedge-buffer-owner"}


@pytest.mark.asyncio
async def test_settle_acks_retries_and_dead_letters_in_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 4)
        lease = await buf.lease("mqtt", 4)
        await buf.settle(lease, acked=[1, 2], retry=[3], dead=[(4, "PUBACK 0x99 payload format invalid")])
        stats = buf.stats()
        assert (stats.count, stats.leased, stats.dead_letters) == (1, 0, 1)  # seq 3 back in the queue
        again = await buf.lease("mqtt", 10)
    records = [m for m in again.messages if not m.announcement]
    (note,) = [m for m in again.messages if m.announcement]
    assert [(m.seq, m.attempts) for m in records] == [(3, 1)]
    body = json.loads(note.payload)["event"]
    assert body["type"] == "buffer_dropped"
    assert body["reason"] == "dead_letter"
    assert body["dropped_seqs"] == [[4, 4]]
    assert body["dropped_total"] == 1
    assert body["dropped_total_by_equipment"] == {"oven-1": 1}


@pytest.mark.asyncio
async def test_a_record_is_deleted_only_when_every_output_acked_it(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db, outputs=("mqtt", "cfx")) as buf:
        await fill(buf, 3)
        mqtt = await buf.lease("mqtt", 10)
        cfx = await buf.lease("cfx", 10)
        assert [m.seq for m in mqtt.messages] == [m.seq for m in cfx.messages] == [1, 2, 3]
        await buf.settle(mqtt, acked=[1, 2, 3])
        assert buf.stats().count == 3
        assert (await buf.lease("mqtt", 10)).messages == []  # acked by mqtt: never handed to it again
        await buf.settle(cfx, acked=[2], retry=[1, 3])
        assert seqs_on_disk(db) == [1, 3]
    async with running(db, outputs=("mqtt", "cfx")) as buf:  # per-output acks survive a restart
        assert [m.seq for m in (await buf.lease("mqtt", 10)).messages] == []
        cfx = await buf.lease("cfx", 10)
        assert [m.seq for m in cfx.messages] == [1, 3]
        await buf.settle(cfx, acked=[1, 3])
        assert buf.stats().count == 0
    assert seqs_on_disk(db) == []


@pytest.mark.asyncio
async def test_lease_is_bounded_in_bytes_as_well_as_in_count(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 20)
        size = len((await buf.lease("mqtt", 1)).messages[0].payload)
        lease = await buf.lease("mqtt", 1000, max_bytes=size * 5 + size // 2)
        assert [m.seq for m in lease.messages] == [2, 3, 4, 5, 6]
        assert buf.stats().outputs["mqtt"].leased_bytes <= size * 6
        tiny = await buf.lease("mqtt", 1000, max_bytes=1)  # always at least one record
        assert [m.seq for m in tiny.messages] == [7]


@pytest.mark.asyncio
async def test_a_producer_cancelled_under_backpressure_does_not_leak_its_queued_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 1 << 20}
    monkeypatch.setattr(buffer_module, "_free_disk", lambda _d: free["bytes"])
    monkeypatch.setattr("emsedge.buffer.core.QUEUE_APPENDS", 1)
    async with running(tmp_path / "b.db", min_free_bytes=64 << 20) as buf:
        async with anyio.create_task_group() as tg:
            tg.start_soon(buf.append, [rec()])
            with anyio.fail_after(5):
                while buf.stats().writable:  # noqa: ASYNC110 - the writer holds the first batch (low disk)
                    await anyio.sleep(0.01)
            for _ in range(5):  # one fits in the queue, four wait for room
                tg.start_soon(buf.append, [rec()])
            with anyio.fail_after(5):
                while buf.stats().queued < 6:  # noqa: ASYNC110 - polling a sync stats() snapshot
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # every producer gives up
        free["bytes"] = 1 << 30
        with anyio.fail_after(5):
            while buf.stats().queued != 0:  # noqa: ASYNC110 - the writer finishes the batch it took
                await anyio.sleep(0.01)
        assert buf.stats().count == 2  # the batch the writer held and the queued one; the four waiting are gone


@pytest.mark.asyncio
async def test_a_wall_clock_step_neither_evicts_young_records_nor_keeps_old_ones(tmp_path: Path) -> None:
    mono = FakeClock(500.0)
    wall = FakeClock(1_000_000.0)
    async with running(tmp_path / "b.db", max_age=3600, clock=mono, wall_clock=wall) as buf:
        await fill(buf, 3)
        wall.now += 2 * 3600  # NTP steps the wall clock 2 h forward: the records are still seconds old
        mono.now += 60
        result = await buf.append([rec("aoi-1")])
        assert result.evicted == 0
        assert buf.stats().oldest_age_s(mono.now) == pytest.approx(60.0)
        wall.now -= 4 * 3600  # and 2 h back: an hour and a half later they are evicted all the same
        mono.now += 5400
        result = await buf.append([rec("spi-1")])
        assert result.evicted_by_equipment == {"oven-1": 3, "aoi-1": 1}
        assert buf.stats().oldest_age_s(mono.now) == pytest.approx(0.0)


@pytest.mark.asyncio
async def test_ages_continue_across_a_restart_from_the_stored_anchor(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    mono = FakeClock(100.0)
    async with running(db, clock=mono) as buf:
        await fill(buf, 1)
        mono.now += 50
        await fill(buf, 1, "aoi-1")  # commits the buffer clock (50 s after the first record)
    mono.now = 7.0  # a reboot: the monotonic clock starts again near zero
    async with running(db, clock=mono) as buf:
        assert buf.stats().oldest_age_s(mono.now) == pytest.approx(50.0)


@pytest.mark.asyncio
async def test_count_loss_is_durable_per_equipment_and_reason_and_announced(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.count_loss("opcua-1", "opcua_queue_overflow", 7)
        await buf.count_loss("opcua-1", "opcua_queue_overflow", 3)
        stats = buf.stats()
        assert stats.losses == {"opcua-1": {"opcua_queue_overflow": 10}}
        assert stats.dropped_total == 10
    (note,) = announcements(db)  # merged while unsent: one announcement
    assert note["count"] == 10
    assert note["dropped_seqs"] == []
    assert note["dropped_total_by_equipment"] == {"opcua-1": 10}
    async with running(db) as buf:
        assert buf.stats().dropped_by_equipment == {"opcua-1": 10}
    assert file_stats(db)["losses"] == {"opcua-1": {"opcua_queue_overflow": 10}}


@pytest.mark.asyncio
async def test_records_larger_than_the_broker_takes_are_refused_counted_and_announced(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        buf.set_max_message_bytes(600)
        big = schema.telemetry("oven-1", "reflow_oven", [schema.reading("blob", "x" * 1000, ts=rec().ts)])
        result = await buf.append([rec(), big, rec()])
        assert (result.accepted, result.refused) == (2, 1)
        assert buf.stats().losses == {"oven-1": {"too_large": 1}}
    assert seqs_on_disk(db) == [1, 3]
    (note,) = announcements(db)
    assert (note["reason"], note["dropped_seqs"]) == ("too_large", [[2, 2]])


@pytest.mark.asyncio
async def test_announcements_are_never_evicted_and_merge_while_unsent(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db, max_bytes=2000) as buf:
        for i in range(60):
            await buf.append([rec("oven-1" if i % 2 else "aoi-1", float(i))])
        stats = buf.stats()
    (note,) = announcements(db)
    covered = [s for first, last in note["dropped_seqs"] for s in range(first, last + 1)]
    assert len(covered) == stats.evicted_total == note["count"] == note["dropped_total"]
    on_disk = seqs_on_disk(db)
    assert sorted(covered + on_disk + [note["seq"]]) == list(range(1, stats.next_seq))  # every seq accounted


@pytest.mark.asyncio
async def test_an_announcement_in_flight_is_not_merged_into_a_new_loss_opens_a_new_one(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await buf.count_loss("oven-1", "x", 1)
        first = await buf.lease("mqtt", 10)  # due at once: the link "connected" at open
        await buf.count_loss("oven-1", "x", 2)
        await buf.settle(first, acked=[m.seq for m in first.messages])
    (note,) = announcements(db)
    assert (note["count"], note["dropped_total"]) == (2, 3)


@pytest.mark.asyncio
async def test_a_format_1_file_is_upgraded_in_place_and_keeps_its_records_and_counters(tmp_path: Path) -> None:
    import sqlite3  # noqa: PLC0415

    db = tmp_path / "b.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TABLE records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL,
            equipment TEXT NOT NULL, ts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            size INTEGER NOT NULL, payload BLOB NOT NULL);
        CREATE TABLE evictions (equipment TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL,
            equipment TEXT NOT NULL, ts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL,
            size INTEGER NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL, dead_at REAL NOT NULL);
        INSERT INTO meta VALUES ('format', 1), ('gateway', 'line1-gw'), ('next_seq', 11), ('dead_letters_total', 2);
        INSERT INTO evictions VALUES ('oven-1', 5);
        INSERT INTO records VALUES (9, 'a', 't/oven-1/telemetry', 'oven-1', '2026-01-01T00:00:00.000Z', 1.0, 0, 100,
            CAST('{"seq":9}' AS BLOB));
        INSERT INTO records VALUES (10, 'b', 't/oven-1/telemetry', 'oven-1', '2026-01-01T00:00:00.000Z', 1.0, 0, 100,
            CAST('{"seq":10}' AS BLOB));
    """)
    conn.close()
    with capture_logs() as logs:
        async with running(db) as buf:
            stats = buf.stats()
            assert (stats.count, stats.next_seq, stats.evicted_total, stats.dead_letters) == (2, 11, 5, 2)
            assert stats.losses == {"oven-1": {"evicted": 5}, "_gateway": {"dead_letter": 2}}
            lease = await buf.lease("mqtt", 10)
            assert [(m.seq, m.replayed) for m in lease.messages] == [(9, True), (10, True)]
            await fill(buf, 1)
    assert any(e["event"] == "buffer_format_upgraded" for e in logs)
    assert file_stats(db)["format"] == 2
    assert seqs_on_disk(db) == [9, 10, 11]


@pytest.mark.asyncio
async def test_typed_errors_say_what_went_wrong(tmp_path: Path) -> None:
    from emsedge.buffer import BufferClosed, BufferFormatError, BufferInUse  # noqa: PLC0415

    db = tmp_path / "b.db"
    with pytest.raises(BufferClosed):
        await Buffer(config(db), gateway="gw", topics=TOPICS).append([rec()])
    async with running(db):
        with pytest.raises(BufferInUse):
            await Buffer(config(db), gateway="gw", topics=TOPICS).run()
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'format'")
    conn.commit()
    conn.close()
    with pytest.raises(BufferFormatError):
        await Buffer(config(db), gateway="gw", topics=TOPICS).run()


@pytest.mark.asyncio
async def test_stats_show_since_when_the_writer_is_busy(tmp_path: Path) -> None:
    import threading  # noqa: PLC0415

    release = threading.Event()
    async with running(tmp_path / "b.db") as buf:
        assert buf.stats().writer_busy_since is None

        def stuck() -> None:
            release.wait(5)

        async with anyio.create_task_group() as tg:
            tg.start_soon(buf._call, stuck)
            with anyio.fail_after(5):
                while buf.stats().writer_busy_since is None:  # noqa: ASYNC110 - polling a sync snapshot
                    await anyio.sleep(0.01)
            release.set()
        assert buf.stats().writer_busy_since is None
