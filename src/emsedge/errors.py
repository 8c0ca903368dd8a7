"""A small typed error hierarchy: callers decide on the type, humans read the message."""

from __future__ import annotations


class EmsedgeError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(EmsedgeError):
    """A configuration file is invalid. `problems` holds one located message per fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class AdapterError(EmsedgeError):
    """Talking to a piece of equipment failed.

    `transient` errors (timeouts, refused connections, dropped sessions) are retried with backoff;
    permanent ones (a node that does not exist, an untrusted certificate, a policy the server does not
    offer) disable that equipment with one clear error until the config changes.

    `unreachable`: the TCP connect to the equipment itself failed (refused, no route, timed out), so a
    port probe can tell when trying again is worth it (see "Early retry" in `emsedge.supervisor`). An
    error after the TCP connect succeeded (a protocol-level refusal) leaves it False.
    """

    def __init__(self, message: str, *, transient: bool = True, unreachable: bool = False) -> None:
        self.transient = transient
        self.unreachable = unreachable
        super().__init__(message)


class BufferError(EmsedgeError):
    """The durable buffer cannot accept or serve records (disk full, unwritable, corrupt)."""

