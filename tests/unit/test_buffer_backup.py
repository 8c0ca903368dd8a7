"""`emsedge buffer backup -c FILE DEST`: a consistent copy while the gateway's buffer is being written,
and buffer commands that find the file through the config like every other command."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import anyio
import pytest

from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.schema import reading, telemetry
from emsedge.tooling import main_buffer
from emsedge.topics import Topics

TS = "2026-01-01T00:00:00.000Z"


def write_config(tmp_path: Path, buffer_file: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(f"""\
        gateway: {{id: gw, site: s, line: l}}
        buffer: {{path: "{buffer_file}"}}
    """))
    return config


@pytest.mark.asyncio
async def test_a_backup_taken_while_the_buffer_is_written_is_a_complete_consistent_file(tmp_path: Path) -> None:
    db = tmp_path / "var" / "buffer.db"
    db.parent.mkdir()
    config = write_config(tmp_path, db)
    dest = tmp_path / "backup.db"
    buffer = Buffer(BufferConfig(path=db, linger=0.001, sync="normal"), gateway="gw", topics=Topics("ems/s/smt/l"))
    appended = 0
    backed_up = anyio.Event()

    async def writer() -> None:
        nonlocal appended
        while not backed_up.is_set():  # keeps committing while the backup runs
            readings = [reading("t", float(appended), ts=TS)]
            await buffer.append([telemetry("reflow-1", "reflow_oven", readings)])
            appended += 1

    async with anyio.create_task_group() as tg:
        await tg.start(buffer.run)
        for i in range(200):
            await buffer.append([telemetry("reflow-1", "reflow_oven", [reading("t", float(i), ts=TS)])])
        tg.start_soon(writer)
        code = await anyio.to_thread.run_sync(main_buffer, ["backup", "-c", str(config), str(dest)])
        backed_up.set()
        tg.cancel_scope.cancel()
    assert code == 0
    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seqs = [row[0] for row in copy.execute("SELECT seq FROM records ORDER BY seq")]
    finally:
        copy.close()
    assert len(seqs) >= 200
    assert seqs == list(range(1, len(seqs) + 1))  # a prefix of what was appended: no hole, no torn write
    assert (tmp_path / "backup.db.seq").is_file()
    assert not (tmp_path / "backup.db.partial").exists()


@pytest.mark.asyncio
async def test_buffer_stats_reads_the_file_the_config_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "buffer.db"
    buffer = Buffer(BufferConfig(path=db, linger=0.001), gateway="gw", topics=Topics("ems/s/smt/l"))
    async with anyio.create_task_group() as tg:
        await tg.start(buffer.run)
        await buffer.append([telemetry("reflow-1", "reflow_oven", [reading("t", 1.0, ts=TS)])])
        tg.cancel_scope.cancel()
    capsys.readouterr()
    assert main_buffer(["stats", "-c", str(write_config(tmp_path, db))]) == 0
    assert "records" in capsys.readouterr().out


def test_buffer_commands_refuse_an_invalid_config_with_exit_status_78(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("gateway: {id: gw, site: s, line: l}\nbuffer: {linger: 5}\n")
    assert main_buffer(["stats", "-c", str(config)]) == 78


def test_a_backup_of_a_missing_buffer_fails_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_buffer(["backup", "--path", str(tmp_path / "none.db"), str(tmp_path / "b.db")]) == 1
    assert "no buffer file" in capsys.readouterr().err


def test_a_backup_carries_the_metas_its_compact_telemetry_names(tmp_path: Path) -> None:
    import orjson  # noqa: PLC0415

    from emsedge.schema import SCHEMA_TELEMETRY_COMPACT, TelemetryMeta, compact_meta_id  # noqa: PLC0415
    from emsedge.telemetry_meta import MetaEncoder, TelemetryMetas  # noqa: PLC0415

    source = tmp_path / "buffer.db"
    metas = TelemetryMetas.beside(source)
    metas.set(TelemetryMeta.build("oven-1", "reflow_oven", {"t": {"unit": "Cel"}}))

    async def fill() -> None:
        buffer = Buffer(BufferConfig(path=source, min_free_bytes=0, linger=0), gateway="gw", topics=Topics("a/b"),
                        encode=MetaEncoder(metas))
        async with anyio.create_task_group() as tg:
            await tg.start(buffer.run)
            await buffer.append([telemetry("oven-1", "reflow_oven", [reading("t", 1.0, unit="Cel", ts=TS)], ts=TS)])
            tg.cancel_scope.cancel()

    anyio.run(fill)
    assert main_buffer(["backup", "--path", str(source), str(tmp_path / "copy.db")]) == 0
    db = sqlite3.connect(tmp_path / "copy.db")
    try:
        (payload,) = db.execute("SELECT payload FROM records").fetchone()
    finally:
        db.close()
    assert orjson.loads(payload)["schema"] == SCHEMA_TELEMETRY_COMPACT
    meta_id = compact_meta_id(payload)
    assert meta_id is not None
    restored = TelemetryMetas.beside(tmp_path / "copy.db").lookup(meta_id)
    assert restored is not None and restored.signals == {"t": {"unit": "Cel"}}
    assert (tmp_path / "buffer.db.metas").stat().st_mode & 0o777 == 0o700
