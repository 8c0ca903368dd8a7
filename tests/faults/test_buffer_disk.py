"""The buffer against real disk faults: a full file system, an unwritable file, a corrupted file, SIGKILL.

Full and read-only disks are real: a 2 MiB tmpfs mounted for the test (and a read-only bind mount of it).
Mounting needs root or CAP_SYS_ADMIN; without it those tests are skipped with that reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from emsedge import schema
from emsedge.buffer import Buffer, export
from emsedge.config import BufferConfig
from emsedge.topics import Topics

TOPICS = Topics("ems/plant-a/smt/line-1")


def big(i: int, size: int = 900) -> schema.Record:
    ts = "2026-01-01T00:00:00.000Z"
    return schema.telemetry("oven-1", "reflow_oven", [schema.reading("log", f"{i:06d}" + "x" * size, ts=ts)], ts=ts)


@asynccontextmanager
async def running(path: Path, **overrides: Any) -> AsyncIterator[Buffer]:
    values: dict[str, Any] = {"path": path, "min_free_bytes": 0, "linger": 0}
    values.update(overrides)
    buf = Buffer(BufferConfig(**values), gateway="line1-gw", topics=TOPICS)
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        try:
            yield buf
        finally:
            tg.cancel_scope.cancel()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs: writes beyond it fail with ENOSPC."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        _run("umount", "-l", str(mnt))


def seqs_on_disk(path: Path) -> list[int]:
    return [r["seq"] for r in export(path)]


async def wait_until(predicate: Any, limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling a sync stats() snapshot
            await anyio.sleep(0.02)


@pytest.mark.asyncio
async def test_a_full_disk_keeps_records_in_memory_logs_once_and_recovers_without_gaps(small_fs: Path) -> None:
    db = small_fs / "buffer.db"
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (1 << 20))
    committed: list[int] = []
    limit = [100_000]
    with capture_logs() as logs:
        async with running(db) as buf:

            async def producer() -> None:
                i = 0
                while len(committed) < limit[0]:
                    await buf.append([big(i * 10 + k) for k in range(10)])
                    committed.append(buf.stats().next_seq - 1)
                    i += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                await wait_until(lambda: not buf.stats().writable)
                stuck_at = len(committed)
                await anyio.sleep(0.5)  # several retries happen while the disk stays full
                stats = buf.stats()
                assert len(committed) == stuck_at  # append waits: back-pressure, nothing dropped
                assert stats.queued > 0
                assert "full" in (stats.last_error or "")
                lease = await buf.lease("mqtt", 3)  # what is on disk can still be delivered
                assert [m.seq for m in lease.messages] == [1, 2, 3]
                limit[0] = stuck_at + 5  # a few batches more, well within the space about to return
                ballast.unlink()  # space returns
            assert len(committed) == stuck_at + 5
            assert buf.stats().writable
            evicted = buf.stats().evicted_total
    events = [e["event"] for e in logs]
    assert events.count("buffer_write_failed") == 1  # once, not once per retry or per record
    assert events.count("buffer_write_recovered") == 1
    assert evicted == 0
    on_disk = seqs_on_disk(db)
    assert on_disk == list(range(1, len(on_disk) + 1))  # no gap: a failed transaction reuses its seqs
    assert committed[-1] <= on_disk[-1]


@pytest.mark.asyncio
async def test_below_min_free_bytes_appends_wait_instead_of_hitting_enospc(small_fs: Path) -> None:
    db = small_fs / "buffer.db"
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (3 << 19))  # 1.5 MiB: less than the 1 MiB floor stays free
    done: list[int] = []
    with capture_logs() as logs:
        async with running(db, min_free_bytes=1 << 20) as buf:

            async def producer() -> None:
                done.append((await buf.append([big(0)])).accepted)

            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                await wait_until(lambda: not buf.stats().writable)
                assert done == []
                ballast.unlink()
            assert done == [1]
    events = [e["event"] for e in logs]
    assert events.count("buffer_low_disk_backpressure") == 1
    assert "buffer_write_failed" not in events  # never ran into ENOSPC mid-transaction


@pytest.mark.asyncio
async def test_an_unwritable_buffer_keeps_serving_what_it_has_and_recovers(small_fs: Path) -> None:
    db = small_fs / "buffer.db"
    async with running(db) as buf:
        await buf.append([big(i) for i in range(3)])
    readonly = _run("mount", "--bind", str(small_fs), str(small_fs))
    assert readonly.returncode == 0, readonly.stderr
    try:
        assert _run("mount", "-o", "remount,bind,ro", str(small_fs)).returncode == 0
        with capture_logs() as logs:
            async with running(db) as buf:
                assert not buf.stats().writable
                lease = await buf.lease("mqtt", 10)
                assert [m.seq for m in lease.messages] == [1, 2, 3]
                await buf.settle(lease, acked=[1])  # cannot be written yet: kept out of circulation, retried
                done: list[int] = []

                async def producer() -> None:
                    done.append((await buf.append([big(9)])).accepted)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(producer)
                    await anyio.sleep(0.3)
                    assert done == []
                    assert _run("mount", "-o", "remount,bind,rw", str(small_fs)).returncode == 0
                assert done == [1]
                await wait_until(lambda: buf.stats().count == 3)  # the pending delete went through
                assert buf.stats().writable
    finally:
        _run("umount", str(small_fs))
    events = [e["event"] for e in logs]
    assert events.count("buffer_write_failed") == 1
    assert events.count("buffer_ack_failed") == 1
    assert seqs_on_disk(db) == [2, 3, 4]


@pytest.mark.asyncio
async def test_a_garbage_file_is_moved_aside_with_one_clear_line_and_seq_continues(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    async with running(db) as buf:
        await buf.append([big(i) for i in range(5)])
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)  # noqa: ASYNC240 - set-up between two runs
    db.write_bytes(os.urandom(64 * 1024))
    with capture_logs() as logs:
        async with running(db) as buf:
            await buf.append([big(0)])
            assert buf.stats().count == 1
    (line,) = [e for e in logs if e["event"] == "buffer_corrupt_moved_aside"]
    assert line["log_level"] == "error"
    moved = Path(line["moved_to"])
    assert moved.exists()  # noqa: ASYNC240 - a check after the run
    assert moved.name.startswith("buffer.db.corrupt-")
    assert "not a database" in line["error"]
    (seq,) = seqs_on_disk(db)
    assert seq > 5  # from the seq sidecar: subscribers see a jump, never a reused seq


@pytest.mark.asyncio
async def test_damaged_pages_behind_a_valid_header_are_detected_at_open(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    async with running(db) as buf:
        await buf.append([big(i) for i in range(200)])
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))
    with capture_logs() as logs:
        async with running(db) as buf:
            assert buf.stats().count == 0
            await buf.append([big(0)])
    assert [e["event"] for e in logs].count("buffer_corrupt_moved_aside") == 1
    assert seqs_on_disk(db)[0] > 200


_PRODUCER = """
import sys, anyio, structlog
from emsedge import schema
from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.topics import Topics

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def main() -> None:
    buf = Buffer(BufferConfig(path=sys.argv[1], min_free_bytes=0, linger=0.002), gateway="gw", topics=Topics("p"))
    async with anyio.create_task_group() as tg:
        await tg.start(buf.run)
        print("ready", flush=True)
        i = 0
        while True:
            reading = schema.reading("t", i, ts="2026-01-01T00:00:00.000Z")
            records = [schema.telemetry("oven-1", "reflow_oven", [reading]) for _ in range(1 + i % 7)]
            await buf.append(records)
            print(buf.stats().next_seq - 1, flush=True)
            i += 1

anyio.run(main)
"""


def test_sigkill_never_loses_a_record_whose_append_had_returned(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    printed: list[int] = []
    for _round in range(3):
        with subprocess.Popen([sys.executable, "-c", _PRODUCER, str(db)], stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 0.7
            while time.monotonic() < deadline:
                printed.append(int(proc.stdout.readline()))
            proc.send_signal(signal.SIGKILL)
            printed += [int(line) for line in proc.stdout.read().split()]  # lines already in the pipe
            proc.wait(timeout=10)
        on_disk = seqs_on_disk(db)
        assert printed[-1] <= on_disk[-1]  # every seq reported as committed survived the kill
        assert on_disk == list(range(1, on_disk[-1] + 1))  # and seqs stay gap-free across the restarts
    assert len(printed) > 50
