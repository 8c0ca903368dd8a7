"""A buffer location that cannot work stops `emsedge run` at start with one clear line and exit 73
(EX_CANTCREAT), never a traceback: a directory, a path under a file, a read-only and a full file system.

Read-only and full file systems are real tmpfs mounts (root or CAP_SYS_ADMIN; skipped with the reason
otherwise). The tests run as root here, so permission bits alone would not stop anything: a mount does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EX_CANTCREAT = 73


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a 1 MiB tmpfs, a read-only tmpfs)."""
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(rw))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        result = _run("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro))
        assert result.returncode == 0, result.stderr
        try:
            yield rw, ro
        finally:
            _run("umount", "-l", str(ro))
    finally:
        _run("umount", "-l", str(rw))


def start(tmp_path: Path, buffer_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway: {id: gw, site: plant, line: line-1}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:9'}\n"
        f"buffer: {{path: '{buffer_path}', min_free_bytes: 0}}\n"
        "http: {listen: null}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "emsedge.cli", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == EX_CANTCREAT, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("emsedge: ")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_buffer_path_that_is_a_directory_is_one_line_and_exit_73(tmp_path: Path) -> None:
    folder = tmp_path / "buffer"
    folder.mkdir()
    assert_one_clear_line(start(tmp_path, folder), "is a directory", "hint:")


def test_a_buffer_path_under_a_file_is_one_line_and_exit_73(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a folder")
    assert_one_clear_line(start(tmp_path, tmp_path / "state" / "buffer.db"), "cannot create buffer", "hint:")


def test_a_read_only_file_system_at_first_start_is_one_line_and_exit_73(
    tmp_path: Path, tmpfs: tuple[Path, Path]
) -> None:
    _, read_only = tmpfs
    assert_one_clear_line(start(tmp_path, read_only / "buffer.db"), "buffer", "read-only", "hint:")
    assert_one_clear_line(start(tmp_path, read_only / "sub" / "buffer.db"), "cannot create buffer")


def test_a_full_file_system_at_first_start_is_one_line_and_exit_73(
    tmp_path: Path, tmpfs: tuple[Path, Path]
) -> None:
    full, _ = tmpfs
    fd = os.open(full / "ballast", os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # every block taken
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    assert_one_clear_line(start(tmp_path, full / "buffer.db"), "buffer", "full", "hint:")
