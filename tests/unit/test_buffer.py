"""Unit tests of the durable buffer: every method and invariant, on a real SQLite file in tmp_path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import emsedge.buffer as buffer_module
from emsedge import schema
from emsedge.buffer import Buffer, export, file_stats, purge
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
    buf = Buffer(config(path, **kwargs), gateway="line1-gw", topics=TOPICS, **extra)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        try:
            yield buf
        finally:
            tg.cancel_scope.cancel()


async def fill(buf: Buffer, n: int, equipment: str = "oven-1") -> None:
    await buf.append([rec(equipment, float(i)) for i in range(n)])


def seqs_on_disk(path: Path) -> list[int]:
    return [r["seq"] for r in export(path)]


@pytest.mark.asyncio
async def test_append_is_durable_a_reopened_buffer_sees_the_records(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    async with running(db) as buf:
        result = await buf.append([rec(), rec("aoi-1")])
        assert result.accepted == 2
        assert result.evicted == 0
    async with running(db) as buf:
        assert buf.stats().count == 2
        lease = await buf.lease(10)
    assert [m.equipment for m in lease.messages] == ["oven-1", "aoi-1"]


@pytest.mark.asyncio
async def test_payload_is_the_encoded_envelope_with_id_seq_gateway_and_topic(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await buf.append([rec(), schema.event("oven-1", "reflow_oven", "connection_lost", reason="timed out")])
        buf.begin_replay()  # mark = 2: both are backlog now, but with replay_rate None order is kept
        lease = await buf.lease(10)
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
        lease = await buf.lease(10)
        await buf.ack(lease, [m.seq for m in lease.messages])
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
        lease = await buf.lease(4)
        await buf.ack(lease, [1, 2])
        stats = buf.stats()
        assert stats.count == 2
        assert stats.leased == 2
        await buf.ack(lease, [3, 4])
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
        lease = await buf.lease(2)
        await buf.ack(lease, [3, 4])
        assert buf.stats().count == 4


@pytest.mark.asyncio
async def test_nack_returns_records_in_order_with_attempts_counted(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 6)
        first = await buf.lease(3)
        second = await buf.lease(2)
        assert [m.seq for m in second.messages] == [4, 5]
        await buf.nack(first, [2, 3])
        await buf.ack(first, [1])
        again = await buf.lease(10)
    assert [m.seq for m in again.messages] == [2, 3, 6]
    assert [m.attempts for m in again.messages] == [1, 1, 0]


@pytest.mark.asyncio
async def test_leases_never_hand_out_the_same_record_twice(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 50)
        seen: list[int] = []
        for _ in range(8):
            seen += [m.seq for m in (await buf.lease(7)).messages]
        assert sorted(seen) == list(range(1, 51))
        assert len(seen) == 50
        assert (await buf.lease(5)).messages == []
        assert buf.stats().leased == 50


@pytest.mark.asyncio
async def test_release_all_makes_leased_records_leasable_again_oldest_first(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 5)
        old = await buf.lease(3)
        buf.release_all()
        assert buf.stats().leased == 0
        lease = await buf.lease(10)
        assert [m.seq for m in lease.messages] == [1, 2, 3, 4, 5]
        await buf.nack(old, [1])  # a stale lease cannot put back what a newer lease holds
        assert [m.seq for m in (await buf.lease(10)).messages] == []


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
    assert on_disk == list(range(41 - len(on_disk), 41))  # a suffix: eviction took a prefix
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
    async with running(tmp_path / "b.db", max_age=60, wall_clock=wall) as buf:
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
        lease = await buf.lease(10)
    assert [(m.seq, m.replayed) for m in lease.messages] == [(1, True), (2, True), (3, False)]
    assert json.loads(lease.messages[0].payload)["replayed"] is True
    assert "replayed" not in json.loads(lease.messages[2].payload)
    assert json.loads(lease.messages[0].payload)["ts"] == "2026-01-01T00:00:00.000Z"


@pytest.mark.asyncio
async def test_begin_replay_turns_everything_appended_so_far_into_backlog(tmp_path: Path) -> None:
    async with running(tmp_path / "b.db") as buf:
        await fill(buf, 3)
        buf.begin_replay()
        await fill(buf, 1)
        assert buf.stats().backlog == 3
        lease = await buf.lease(10)
        assert [m.replayed for m in lease.messages] == [True, True, True, False]
        await buf.ack(lease, [1, 2])
        assert buf.stats().backlog == 1


@pytest.mark.asyncio
async def test_replay_rate_lets_live_records_through_first_and_meters_the_backlog(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 30)
    clock = FakeClock()
    async with running(db, replay_rate=5.0, clock=clock) as buf:
        await fill(buf, 3)  # live: seqs 31..33
        first = await buf.lease(20)
        assert [m.seq for m in first.messages] == [31, 32, 33, 1, 2, 3, 4, 5]  # live, then a 5-token burst
        assert (await buf.lease(20)).messages == []  # bucket empty, no live records
        clock.now += 1.0
        second = await buf.lease(20)
        assert [m.seq for m in second.messages] == [6, 7, 8, 9, 10]
        clock.now += 0.2
        assert [m.seq for m in (await buf.lease(20)).messages] == [11]


@pytest.mark.asyncio
async def test_without_replay_rate_leasing_is_strictly_oldest_first(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 3)
    async with running(db) as buf:
        await fill(buf, 2)
        lease = await buf.lease(4)
    assert [m.seq for m in lease.messages] == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_dead_letter_moves_records_aside_counts_and_logs_them(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 3)
        lease = await buf.lease(3)
        with capture_logs() as logs:
            await buf.dead_letter([2], "PUBACK reason 0x97 payload format invalid")
        stats = buf.stats()
        assert stats.dead_letters == 1
        assert stats.count == 2
        assert stats.leased == 2
        await buf.ack(lease, [1, 3])
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
        await buf.wait_for_messages(0.1)
        assert anyio.current_time() - start >= 0.09
        async with anyio.create_task_group() as tg:
            tg.start_soon(fill, buf, 1)
            with anyio.fail_after(2):
                await buf.wait_for_messages(10)
        assert (await buf.lease(1)).messages


@pytest.mark.asyncio
async def test_wait_for_messages_sleeps_until_the_next_replay_token(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with running(db) as buf:
        await fill(buf, 5)
    async with running(db, replay_rate=2.0) as buf:
        assert len((await buf.lease(100)).messages) == 2  # burst of one second at 2/s
        start = anyio.current_time()
        await buf.wait_for_messages(5)
        waited = anyio.current_time() - start
        assert 0.3 <= waited <= 1.5
        assert len((await buf.lease(100)).messages) == 1


@pytest.mark.asyncio
async def test_concurrent_appends_share_write_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = Buffer._write_batch

    def counting(self: Buffer, batch: list[Any]) -> Any:
        calls.append(sum(len(p.records) for p in batch))
        return original(self, batch)

    monkeypatch.setattr(Buffer, "_write_batch", counting)
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
        lease = await buf.lease(1)
        await buf.dead_letter([m.seq for m in lease.messages], "test")
    assert purge(db, dead_letters_only=True) == 1
    assert len(seqs_on_disk(db)) == 3
    assert purge(db) == 3
    assert file_stats(db)["records"] == 0
    async with running(db) as buf:
        await fill(buf, 1)
    assert seqs_on_disk(db) == [5]


def test_offline_helpers_refuse_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match="no buffer file"):
        file_stats(tmp_path / "nope.db")
