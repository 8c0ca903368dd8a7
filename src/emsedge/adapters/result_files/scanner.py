"""Directory polling with settle detection, and bounded-memory reading of the files it finds.

Polling, not inotify: inotify does not see files written by other hosts on SMB/NFS shares, which is
where testers usually write. A file is offered for reading only when its size and mtime have been the
same for `settle` seconds on the scanner's (injectable, monotonic) clock, so a file appended in chunks
is never read half-way; a file written under a temporary name and renamed into place is seen under its
final name only (temporary names should not match `pattern`; hidden `.name` files are never offered).

The scanner keeps one small entry per candidate file, never file contents. `read()` streams the hash
of a file in 1 MiB chunks and keeps the bytes only when the file is not larger than the limit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file that has settled: `name` is its path relative to the scanned folder, with `/`."""

    path: Path
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileContent:
    sha256: str
    size: int
    data: bytes | None  # None when the file is larger than the limit (hashed, not kept)


class FileChanged(Exception):
    """The file changed or vanished between settling and reading; it is offered again once it settles."""


class Scanner:
    def __init__(
        self,
        root: Path,
        patterns: list[str],
        *,
        settle: float,
        recursive: bool = False,
        exclude: tuple[Path, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.patterns = patterns
        self.settle = settle
        self.recursive = recursive
        self.exclude = tuple(p.resolve() for p in exclude)
        self.clock = clock
        self._watch: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, unchanged since)
        self._done: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) already handled

    def scan(self) -> list[Candidate]:
        """Settled files not handled yet, oldest first. Raises OSError when the folder is not reachable."""
        now = self.clock()
        present: set[str] = set()
        ready: list[Candidate] = []
        os.stat(self.root)  # a vanished folder or share is an error, not an empty folder
        for path, name, st in self._files():
            present.add(name)
            identity = (st.st_size, st.st_mtime_ns)
            if self._done.get(name) == identity:
                continue
            watched = self._watch.get(name)
            if watched is None or watched[:2] != identity:
                self._watch[name] = (*identity, now)
                if self.settle > 0:
                    continue
                watched = self._watch[name]
            if now - watched[2] >= self.settle:
                ready.append(Candidate(path, name, *identity))
        for gone in self._watch.keys() - present:
            del self._watch[gone]
        for gone in self._done.keys() - present:
            del self._done[gone]
        ready.sort(key=lambda c: (c.mtime_ns, c.name))
        return ready

    def done(self, candidate: Candidate) -> None:
        """Handled (processed, rejected, or moved away): not offered again unless it changes."""
        self._watch.pop(candidate.name, None)
        self._done[candidate.name] = (candidate.size, candidate.mtime_ns)

    def retry(self, candidate: Candidate) -> None:
        """Offer it again only after it settles again (e.g. it changed while being read)."""
        self._watch.pop(candidate.name, None)

    @property
    def watched(self) -> int:
        return len(self._watch)

    def _files(self) -> Iterator[tuple[Path, str, os.stat_result]]:
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                if folder == self.root:
                    raise
                continue  # a sub-folder that vanished or is not readable: skip it this scan
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.recursive and Path(entry.path).resolve() not in self.exclude:
                            stack.append(Path(entry.path))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    name = Path(entry.path).relative_to(self.root).as_posix()
                    if not any(fnmatch.fnmatch(entry.name, p) or fnmatch.fnmatch(name, p) for p in self.patterns):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished between listing and stat
                yield Path(entry.path), name, st


def read(candidate: Candidate, max_size: int) -> FileContent:
    """Hash the file in chunks; keep its bytes only if it is at most `max_size`. Raises FileChanged when
    the file is no longer what settled (size or mtime differ, or it vanished)."""
    digest = hashlib.sha256()
    keep = candidate.size <= max_size
    chunks: list[bytes] = []
    size = 0
    try:
        with open(candidate.path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
                raise FileChanged(candidate.name)
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if keep:
                    if size > max_size:
                        raise FileChanged(candidate.name)
                    chunks.append(chunk)
    except FileNotFoundError:
        raise FileChanged(candidate.name) from None
    if size != candidate.size:
        raise FileChanged(candidate.name)
    return FileContent(digest.hexdigest(), size, b"".join(chunks) if keep else None)
