"""Settle detection on an injectable clock, and chunked hashing with a size limit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from emsedge.adapters.result_files.scanner import Candidate, FileChanged, Scanner, read


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_file_is_offered_once_its_size_and_mtime_held_for_settle(tmp_path: Path) -> None:
    clock = Clock()
    scanner = Scanner(tmp_path, ["*.log"], settle=2.0, clock=clock)
    f = tmp_path / "a.log"
    f.write_text("x")
    assert scanner.scan() == []
    clock.now += 1.999
    assert scanner.scan() == []
    os.utime(f, ns=(5, 5))  # mtime alone changed (touched, rewritten with the same size): settle again
    clock.now += 1.0
    assert scanner.scan() == []
    clock.now += 2.0
    (ready,) = scanner.scan()
    assert (ready.name, ready.size, ready.mtime_ns) == ("a.log", 1, 5)
    scanner.done(ready)
    clock.now += 10
    assert scanner.scan() == []  # handled: not offered again
    f.write_text("xy")
    assert scanner.scan() == []
    clock.now += 2
    assert [c.name for c in scanner.scan()] == ["a.log"]  # changed after it was handled: offered again


def test_a_file_that_vanishes_while_settling_is_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    scanner = Scanner(tmp_path, ["*"], settle=1.0, clock=clock)
    (tmp_path / "a.log").write_text("x")
    scanner.scan()
    (tmp_path / "a.log").unlink()
    scanner.scan()
    assert scanner.watched == 0


def test_a_missing_folder_is_an_error_not_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Scanner(tmp_path / "gone", ["*"], settle=0).scan()


def test_a_large_file_is_hashed_in_chunks_and_not_kept(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    f = tmp_path / "big.log"
    f.write_bytes(data)
    st = f.stat()
    candidate = Candidate(f, "big.log", st.st_size, st.st_mtime_ns)
    content = read(candidate, max_size=1 << 20)
    assert content.data is None and content.size == len(data)
    assert content.sha256 == hashlib.sha256(data).hexdigest()
    assert read(candidate, max_size=8 << 20).data == data


def test_a_file_that_grew_after_it_settled_is_not_read(tmp_path: Path) -> None:
    f = tmp_path / "a.log"
    f.write_bytes(b"abc")
    st = f.stat()
    candidate = Candidate(f, "a.log", st.st_size, st.st_mtime_ns)
    with open(f, "ab") as out:
        out.write(b"more")
    with pytest.raises(FileChanged):
        read(candidate, max_size=1 << 20)
