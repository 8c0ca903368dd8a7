"""The result_files session on real files in tmp_path: settle detection (injectable clock), ledger,
archive only after a durable emit, rejects, restarts, a folder that vanishes and returns."""

from __future__ import annotations

import os
import shutil
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from emsedge.adapters.base import AdapterContext, EquipmentState
from emsedge.adapters.result_files import parsers
from emsedge.adapters.result_files.adapter import ResultFilesAdapter, move_into
from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.adapters.result_files.ledger import Ledger
from emsedge.adapters.result_files.model import TestedBoard
from emsedge.errors import AdapterError
from emsedge.schema import Record
from emsedge.service import GatewayState, metrics_text
from emsedge.supervisor import EquipmentHealth, supervise_adapter

GOLDEN = Path(__file__).parent.parent / "golden" / "result_files"
PANEL = (GOLDEN / "i3070_panel_one_failing" / "input.log").read_bytes()
SERIALS = ["PCB-2026-000201", "PCB-2026-000202"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """The emit path: records what was made 'durable'; `hold` makes emit block until released."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.hold: anyio.Event | None = None
        self.entered = anyio.Event()
        self.changed = anyio.Event()

    async def __call__(self, records: Sequence[Record]) -> None:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        self.records.extend(records)
        self.changed.set()
        self.changed = anyio.Event()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r.body["event"] for r in self.records if r.event_type == kind]

    def serials(self) -> list[str]:
        return [e["serial"] for e in self.events("unit_tested")]


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("in", "done", "error")}
    paths["in"].mkdir()
    paths["ledger"] = tmp_path / "state" / "ict-1.ledger"
    return paths


def _adapter(folders: dict[str, Path], sink: Sink, clock: Clock | None = None, **overrides: Any) -> ResultFilesAdapter:
    raw: dict[str, Any] = {
        "id": "ict-1", "type": "ict", "adapter": "result_files", "path": folders["in"], "pattern": "*.log",
        "format": "i3070", "timezone": "Europe/Berlin", "settle": 0, "archive": folders["done"],
        "error": folders["error"],
    }
    raw.update(overrides)
    config = ResultFilesEquipment.model_validate(raw)
    return ResultFilesAdapter(
        config, AdapterContext(equipment=config, emit=sink), ledger_path=folders["ledger"], clock=clock or Clock()
    )


async def _until(predicate: Callable[[], bool]) -> None:
    """Wait on observable state (the caller's `fail_after` bounds it)."""
    while not predicate():  # noqa: ASYNC110 - polls state no event announces
        await anyio.sleep(0.01)


def _append(path: Path, data: bytes) -> None:
    """Append a chunk and pin the mtime: on a share with coarse mtimes the size change alone must count."""
    with open(path, "ab") as f:
        f.write(data)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def _all_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith((".ledger", "-wal", "-shm")))


@pytest.mark.asyncio
async def test_a_file_appended_in_chunks_is_read_only_after_it_settled(folders: dict[str, Path]) -> None:
    clock, sink = Clock(), Sink()
    target = folders["in"] / "panel.log"
    async with _adapter(folders, sink, clock, settle=2.0) as adapter:
        _append(target, PANEL[:700])
        assert await adapter.scan_once() == 0  # first seen at t=0
        clock.now = 1.5
        _append(target, PANEL[700:])
        assert await adapter.scan_once() == 0  # changed at t=1.5: settling again
        clock.now = 3.4
        assert await adapter.scan_once() == 0  # stable for 1.9 s only
        assert sink.serials() == []
        clock.now = 3.5
        assert await adapter.scan_once() == 1
    assert sink.serials() == SERIALS
    assert (folders["done"] / "panel.log").read_bytes() == PANEL


@pytest.mark.asyncio
async def test_a_file_renamed_into_place_is_read_under_its_final_name_only(folders: dict[str, Path]) -> None:
    clock, sink = Clock(), Sink()
    async with _adapter(folders, sink, clock, settle=1.0) as adapter:
        tmp = folders["in"] / "panel.log.tmp"
        tmp.write_bytes(PANEL)
        assert await adapter.scan_once() == 0
        clock.now = 5.0
        assert await adapter.scan_once() == 0  # the temporary name does not match the pattern
        tmp.rename(folders["in"] / "panel.log")
        assert await adapter.scan_once() == 0
        clock.now = 6.0
        assert await adapter.scan_once() == 1
    assert {e["source"]["file"] for e in sink.events("unit_tested")} == {"panel.log"}


@pytest.mark.asyncio
async def test_the_file_moves_to_the_archive_only_after_emit_returned(folders: dict[str, Path]) -> None:
    sink = Sink()
    sink.hold = anyio.Event()
    (folders["in"] / "panel.log").write_bytes(PANEL)
    async with _adapter(folders, sink) as adapter, anyio.create_task_group() as tg:
        tg.start_soon(adapter.scan_once)
        await sink.entered.wait()
        for _ in range(20):  # give the adapter every chance to move early
            await anyio.sleep(0.01)
        assert (folders["in"] / "panel.log").exists()
        assert not folders["done"].exists()
        assert Ledger(folders["ledger"]).count() == 0
        sink.hold.set()
    assert (folders["done"] / "panel.log").exists() and not (folders["in"] / "panel.log").exists()
    assert sink.serials() == SERIALS


@pytest.mark.asyncio
async def test_a_re_dropped_identical_file_emits_nothing_and_is_archived_beside_the_first(
    folders: dict[str, Path],
) -> None:
    sink = Sink()
    (folders["in"] / "panel.log").write_bytes(PANEL)
    async with _adapter(folders, sink) as adapter:
        await adapter.scan_once()
        shutil.copy(folders["done"] / "panel.log", folders["in"] / "panel.log")
        (folders["in"] / "copy-of-panel.log").write_bytes(PANEL)
        assert await adapter.scan_once() == 2
        assert adapter.stats.files_duplicate == 2
    assert sink.serials() == SERIALS
    assert _all_files(folders["done"]) == ["copy-of-panel.log", "panel.log", "panel.log.1"]


@pytest.mark.asyncio
async def test_a_changed_file_with_the_same_name_is_processed_again(folders: dict[str, Path]) -> None:
    sink = Sink()
    (folders["in"] / "panel.log").write_bytes(PANEL)
    async with _adapter(folders, sink, archive=None) as adapter:
        assert await adapter.scan_once() == 1
        assert await adapter.scan_once() == 0  # left in place: not read again
        (folders["in"] / "panel.log").write_bytes(PANEL.replace(b"PCB-2026-000202", b"PCB-2026-000299"))
        assert await adapter.scan_once() == 1
    assert sink.serials() == [*SERIALS, SERIALS[0], "PCB-2026-000299"]


@pytest.mark.asyncio
async def test_a_retest_of_the_same_serial_is_a_new_event(folders: dict[str, Path]) -> None:
    sink = Sink()
    (folders["in"] / "first.log").write_bytes(PANEL)
    (folders["in"] / "retest.log").write_bytes(PANEL.replace(b"260114101502", b"260114102502"))
    async with _adapter(folders, sink) as adapter:
        assert await adapter.scan_once() == 2
    assert sink.serials() == SERIALS * 2
    assert len({e["started"] for e in sink.events("unit_tested")}) == 2


@pytest.mark.asyncio
async def test_a_restart_after_the_ledger_write_only_moves_the_file(folders: dict[str, Path]) -> None:
    sink = Sink()
    (folders["in"] / "panel.log").write_bytes(PANEL)
    blocked = folders["done"].parent / "not-a-folder"
    blocked.write_text("the archive share is a file now")
    async with _adapter(folders, sink, archive=blocked / "done") as adapter:
        assert await adapter.scan_once() == 1
        assert adapter.stats.move_errors == 1
    assert (folders["in"] / "panel.log").exists()  # events durable and recorded, move failed: kept

    async with _adapter(folders, sink) as restarted:  # a restart, the archive reachable again
        assert await restarted.scan_once() == 1
    assert sink.serials() == SERIALS
    assert (folders["done"] / "panel.log").exists()


@pytest.mark.asyncio
async def test_a_crash_between_emit_and_ledger_re_emits_the_same_results_with_the_same_ids(
    folders: dict[str, Path],
) -> None:
    """The redelivery carries the same message ids (and source.sha256/board_index): MES drops it by `id`."""
    sink = Sink()
    (folders["in"] / "panel.log").write_bytes(PANEL)

    async def emit_then_die(records: Sequence[Record]) -> None:
        await sink(records)
        if any(r.event_type == "unit_tested" for r in records):
            raise RuntimeError("killed right after the buffer commit")

    raw_adapter = _adapter(folders, sink)
    raw_adapter.ctx.emit = emit_then_die
    async with raw_adapter:
        with pytest.raises(RuntimeError):
            await raw_adapter.scan_once()
    assert (folders["in"] / "panel.log").exists()
    async with _adapter(folders, sink) as restarted:
        assert await restarted.scan_once() == 1
        assert await restarted.scan_once() == 0
    first, second = sink.events("unit_tested")[:2], sink.events("unit_tested")[2:]
    assert [e["source"] for e in first] == [e["source"] for e in second]
    assert len(sink.events("unit_tested")) == 4
    ids = [r.message_id for r in sink.records if r.event_type == "unit_tested"]
    assert ids[:2] == ids[2:] and None not in ids and len(set(ids)) == 2


@pytest.mark.asyncio
async def test_file_events_carry_ids_derived_from_gateway_equipment_content_and_board(
    folders: dict[str, Path],
) -> None:
    """uuid5 ids: the same file content read by the same equipment of the same gateway always gets the same
    ids; another gateway, equipment or content gets others; the buffer keeps them (`Record.message_id`)."""
    runs: list[str | None] = []

    async def ids(gateway: str | None, equipment: str = "ict-1", data: bytes = PANEL) -> dict[str, list[str]]:
        sink = Sink()
        for name, content in (("panel.log", data), ("broken.log", b"not an i3070 log\n")):
            (folders["in"] / name).write_bytes(content)
        fresh = {**folders, "ledger": folders["ledger"].with_name(f"{len(runs)}.ledger")}  # every file new again
        runs.append(gateway)
        adapter = _adapter(fresh, sink, archive=None, error=None, id=equipment)
        adapter.ctx.gateway = gateway
        async with adapter:
            assert await adapter.scan_once() == 2
        found: dict[str, list[str]] = {}
        for r in sink.records:
            assert r.message_id is not None and str(uuid.UUID(r.message_id)) == r.message_id
            found.setdefault(str(r.event_type), []).append(r.message_id)
        return found

    first = await ids("gw-1")
    assert len(first["unit_tested"]) == 2 and len(set(first["unit_tested"])) == 2
    assert len(first["file_rejected"]) == 1
    assert await ids("gw-1") == first
    changed = PANEL.replace(b"PCB-2026-000202", b"PCB-2026-000203")
    for other in (await ids("gw-2"), await ids("gw-1", "ict-2"), await ids(None)):
        assert not set(other["unit_tested"]) & set(first["unit_tested"])
        assert other["file_rejected"] != first["file_rejected"]
    assert not set((await ids("gw-1", data=changed))["unit_tested"]) & set(first["unit_tested"])


@pytest.mark.asyncio
async def test_an_unparseable_file_goes_to_error_with_a_reason_and_the_next_file_is_read(
    folders: dict[str, Path],
) -> None:
    sink = Sink()
    (folders["in"] / "a-broken.log").write_bytes(PANEL[:500])
    (folders["in"] / "b-good.log").write_bytes(PANEL)
    os.utime(folders["in"] / "a-broken.log", (1, 1))  # oldest first
    before = _all_files(folders["in"])
    async with _adapter(folders, sink) as adapter:
        assert await adapter.scan_once() == 2
    (rejected,) = sink.events("file_rejected")
    last_line = PANEL[:500].count(b"\n") + 1  # the record cut off by the truncation
    assert rejected["file"] == "a-broken.log" and rejected["line"] == last_line
    assert "never closed" in rejected["reason"]
    assert sink.serials() == SERIALS
    reason = (folders["error"] / "a-broken.log.reason.txt").read_text(encoding="utf-8")
    assert "never closed" in reason and f"line {last_line}" in reason
    assert (folders["error"] / "a-broken.log").read_bytes() == PANEL[:500]
    moved = sorted([*_all_files(folders["done"]), *_all_files(folders["error"])])
    assert [n for n in moved if not n.endswith(".reason.txt")] == before  # never deleted


@pytest.mark.asyncio
async def test_a_rejected_file_left_in_place_is_announced_once(folders: dict[str, Path]) -> None:
    sink = Sink()
    (folders["in"] / "broken.log").write_bytes(b"not an i3070 log\n")
    async with _adapter(folders, sink, error=None) as adapter:
        await adapter.scan_once()
        await adapter.scan_once()
    async with _adapter(folders, sink, error=None) as restarted:
        await restarted.scan_once()
    assert len(sink.events("file_rejected")) == 1
    assert (folders["in"] / "broken.log").exists()


@pytest.mark.asyncio
async def test_a_file_above_max_file_size_is_rejected_unread(folders: dict[str, Path]) -> None:
    sink = Sink()
    (folders["in"] / "huge.log").write_bytes(PANEL * 40)
    async with _adapter(folders, sink, max_file_size="16KiB") as adapter:
        assert await adapter.scan_once() == 1
    (rejected,) = sink.events("file_rejected")
    assert "larger than max_file_size 16384" in rejected["reason"] and rejected["size"] == len(PANEL) * 40
    assert sink.serials() == []


@pytest.mark.asyncio
async def test_a_200_mb_file_is_hashed_in_bounded_memory_and_rejected_with_its_size(folders: dict[str, Path]) -> None:
    sink = Sink()
    huge = folders["in"] / "huge.log"
    huge.touch()
    os.truncate(huge, 200 << 20)  # sparse: 200 MB to read, little to write
    tracemalloc.start()
    try:
        async with _adapter(folders, sink) as adapter:
            assert await adapter.scan_once() == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak Python allocations {peak / 1e6:.1f} MB while reading a 200 MB file"
    (rejected,) = sink.events("file_rejected")
    assert rejected["size"] == 200 << 20 and "larger than max_file_size" in rejected["reason"]
    assert (folders["error"] / "huge.log").stat().st_size == 200 << 20


@pytest.mark.asyncio
async def test_a_vanished_folder_ends_the_scan_with_a_transient_error_and_scanning_recovers(
    folders: dict[str, Path],
) -> None:
    sink = Sink()
    away = folders["in"].with_name("unmounted")
    async with _adapter(folders, sink) as adapter:
        await adapter.scan_once()
        folders["in"].rename(away)
        with pytest.raises(AdapterError) as raised:
            await adapter.scan_once()
        assert raised.value.transient and "not reachable" in str(raised.value)
        away.rename(folders["in"])
        (folders["in"] / "panel.log").write_bytes(PANEL)
        assert await adapter.scan_once() == 1
    assert sink.serials() == SERIALS


@pytest.mark.asyncio
async def test_under_the_supervisor_a_vanished_folder_is_one_lost_and_one_restored_event(
    folders: dict[str, Path],
) -> None:
    sink = Sink()
    away = folders["in"].with_name("unmounted")
    adapter = _adapter(folders, sink, poll_interval=0.01, backoff={"initial": 0.01, "max": 0.05})
    async with anyio.create_task_group() as tg:
        tg.start_soon(supervise_adapter, adapter, adapter.ctx)
        with anyio.fail_after(10):
            await _until(lambda: adapter.ctx.health.state == EquipmentState.CONNECTED)
            folders["in"].rename(away)
            await _until(lambda: adapter.ctx.health.state == EquipmentState.RETRYING)
            away.rename(folders["in"])
            (folders["in"] / "panel.log").write_bytes(PANEL)
            await _until((folders["done"] / "panel.log").exists)
        tg.cancel_scope.cancel()
    assert [r.event_type for r in sink.records if r.event_type != "unit_tested"] == [
        "connection_restored", "connection_lost", "connection_restored",
    ]
    assert sink.serials() == SERIALS


@pytest.mark.asyncio
async def test_a_crashing_plugin_parser_rejects_the_file_and_the_folder_goes_on(folders: dict[str, Path]) -> None:
    @parsers.register("crashy")
    def crashy(data: bytes, options: parsers.ParseOptions) -> list[TestedBoard]:
        raise ZeroDivisionError("bug in the plug-in")

    sink = Sink()
    (folders["in"] / "panel.log").write_bytes(PANEL)
    try:
        async with _adapter(folders, sink, format="crashy") as adapter:
            assert await adapter.scan_once() == 1
    finally:
        parsers._registered.pop("crashy")
    (rejected,) = sink.events("file_rejected")
    assert "crashed: ZeroDivisionError" in rejected["reason"]


@pytest.mark.asyncio
async def test_deep_folders_are_scanned_and_mirrored_in_the_archive(folders: dict[str, Path]) -> None:
    sink = Sink()
    deep = folders["in"] / "2026" / "01" / "14"
    deep.mkdir(parents=True)
    (deep / "panel.log").write_bytes(PANEL)
    (folders["in"] / ".hidden.log").write_bytes(PANEL)
    inner_archive = folders["in"] / "done"
    async with _adapter(folders, sink, recursive=True, archive=inner_archive) as adapter:
        assert await adapter.scan_once() == 1
        assert await adapter.scan_once() == 0  # the archive inside the scanned folder is not scanned
    assert (inner_archive / "2026" / "01" / "14" / "panel.log").exists()
    assert sink.events("unit_tested")[0]["source"]["file"] == "2026/01/14/panel.log"


@pytest.mark.asyncio
async def test_hundreds_of_files_in_one_folder_are_each_emitted_once(folders: dict[str, Path]) -> None:
    sink = Sink()
    for i in range(300):
        (folders["in"] / f"b{i:04d}.log").write_bytes(PANEL.replace(b"PCB-2026-0002", f"S{i:04d}-".encode()))
    async with _adapter(folders, sink) as adapter:
        assert await adapter.scan_once() == 300
        assert await adapter.scan_once() == 0
    assert len(sink.serials()) == 600 == len(set(sink.serials()))
    assert Ledger(folders["ledger"]).count("processed") == 300


@pytest.mark.asyncio
async def test_the_session_reports_connected_and_keeps_scanning(folders: dict[str, Path]) -> None:
    sink = Sink()
    adapter = _adapter(folders, sink, poll_interval="10ms")
    async with anyio.create_task_group() as tg:
        tg.start_soon(adapter.session, adapter.ctx)
        with anyio.fail_after(10):
            await _until(lambda: adapter.ctx.health.state == EquipmentState.CONNECTED)
            (folders["in"] / "panel.log").write_bytes(PANEL)
            while len(sink.serials()) < 2:
                await sink.changed.wait()
        tg.cancel_scope.cancel()
    assert sink.serials() == SERIALS


def test_move_into_never_overwrites_and_keeps_the_reason_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("one")
    (tmp_path / "b.log").write_text("two")
    first = move_into(tmp_path / "a.log", tmp_path / "error", "x.log", "bad\n")
    second = move_into(tmp_path / "b.log", tmp_path / "error", "x.log", "worse\n")
    assert (first.name, second.name) == ("x.log", "x.log.1")
    assert (tmp_path / "error" / "x.log").read_text() == "one"
    assert (tmp_path / "error" / "x.log.1.reason.txt").read_text() == "worse\n"


@pytest.mark.asyncio
async def test_metrics_count_files_boards_rejects_and_parse_time_per_equipment(folders: dict[str, Path]) -> None:
    sink = Sink()
    (folders["in"] / "panel.log").write_bytes(PANEL)
    (folders["in"] / "junk.log").write_bytes(b"\x00\xff" * 100)
    adapter = _adapter(folders, sink)
    async with adapter:
        assert await adapter.scan_once() == 2
    state = GatewayState(
        gateway_id="gw", version="0", started_at="2026-01-01T00:00:00.000Z",
        equipment={"ict-1": adapter.ctx.health, "reflow-1": EquipmentHealth()},
        equipment_info={"ict-1": ("ict", "result_files"), "reflow-1": ("reflow_oven", "modbus")},
        buffer_stats=lambda: None, broker_connected=lambda: True, broker_url=lambda: None,
    )
    text = metrics_text(state).decode()
    assert 'emsedge_result_files_processed_total{equipment="ict-1"} 1.0' in text
    assert 'emsedge_result_files_rejected_total{equipment="ict-1"} 1.0' in text
    assert 'emsedge_boards_emitted_total{equipment="ict-1"} 2.0' in text
    assert 'emsedge_result_file_parse_seconds_count{equipment="ict-1"} 2.0' in text
    assert 'result_files_processed_total{equipment="reflow-1"}' not in text
