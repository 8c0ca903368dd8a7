"""The buffer's files are private whatever the umask: the database, -wal, -shm and .seq 0600, new folders 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_buffer import rec, running


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_022")
async def test_buffer_files_are_0600_and_created_folders_0700_under_umask_022(tmp_path: Path) -> None:
    db = tmp_path / "var" / "lib" / "emsedge" / "buffer.db"
    async with running(db) as buf:
        await buf.append([rec(), rec("aoi-1")])
        files = {p.name: mode(p) for p in db.parent.iterdir()}
        assert files == {"buffer.db": 0o600, "buffer.db-wal": 0o600, "buffer.db-shm": 0o600, "buffer.db.seq": 0o600}
    for folder in (tmp_path / "var", tmp_path / "var" / "lib", db.parent):
        assert mode(folder) == 0o700, folder


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_022")
async def test_an_existing_0644_sidecar_and_database_become_0600(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    async with running(db) as buf:
        await buf.append([rec()])
    for name in ("buffer.db", "buffer.db.seq"):
        os.chmod(tmp_path / name, 0o644)  # as an older emsedge left them
    async with running(db) as buf:
        await buf.append([rec()])
        assert mode(db) == 0o600
        assert mode(tmp_path / "buffer.db.seq") == 0o600
