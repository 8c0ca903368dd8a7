"""The buffer's typed errors: one class per documented case, all subclasses of `emsedge.errors.BufferError`.

Which ones end the gateway (the runtime lets them propagate out of `Buffer.run()`):

* `BufferInUse`: another emsedge process holds the file's lock. Ends the gateway at start (exit code of a
  `BufferError`): two gateways on one file would hand out the same seqs.
* `BufferUnwritable` raised by `run()` at open: the file cannot be created or opened at all (no
  directory permission, no read-only copy to serve). Ends the gateway at start.
* `BufferFormatError`: the file was written by a newer emsedge (format higher than this one reads).
  Ends the gateway at start; nothing is changed on disk.
* `BufferOwnerDied`: the owner thread stopped on an unexpected exception (a bug). Ends the gateway;
  systemd restarts it and everything committed is still on disk.

Which ones do not:

* `BufferCorrupt` never escapes: a damaged file is moved aside and a fresh one started (logged once).
* A full disk, a read-only remount or low free space is not raised at all while running: appends wait
  (back-pressure) and the writer retries with capped backoff. `BufferFull` is raised only to a caller that
  asked not to wait (`append(..., wait=False)` is not offered today; the class exists for the CFX output).
* `BufferClosed`: `append`/`lease`/`settle` called before `run()` started or after it stopped (during
  shutdown a producer may see it; the supervisor treats it like a stopping gateway).
"""

from __future__ import annotations

from emsedge.errors import BufferError


class BufferClosed(BufferError):
    """The buffer is not running (not started yet, or shutting down)."""


class BufferInUse(BufferError):
    """Another emsedge process has this buffer file open (flock on the seq sidecar)."""


class BufferUnwritable(BufferError):
    """The buffer file cannot be opened or written (permissions, read-only file system, full disk)."""


class BufferCorrupt(BufferError):
    """SQLite calls the file damaged ("not a database", "malformed"); it is moved aside at open."""


class BufferFormatError(BufferError):
    """The file has an on-disk format this emsedge does not read (written by a newer version)."""


class BufferFull(BufferError):
    """The in-memory queue in front of the writer is full and the caller asked not to wait."""


class BufferOwnerDied(BufferError):
    """The owner thread ended on an unexpected exception; the gateway must stop (and be restarted)."""


__all__ = [
    "BufferClosed",
    "BufferCorrupt",
    "BufferError",
    "BufferFormatError",
    "BufferFull",
    "BufferInUse",
    "BufferOwnerDied",
    "BufferUnwritable",
]
