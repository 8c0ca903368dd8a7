"""What an adapter package registers (`AdapterSpec`) and the optional capabilities an adapter may have.

An adapter is one folder (or one package): `config.py` with its model (a subclass of `EquipmentBase`), the
adapter itself, a README. Its package exports one `AdapterSpec` and names it in one entry-point line:

    [project.entry-points."emsedge.adapters"]
    json_file = "emsedge_json_file:spec"

Built-in adapters register exactly the same way (see emsedge's own pyproject.toml). The module holding the
spec imports only the config model; `build` imports the adapter and its protocol library, so the registry
(and `check-config`, `config-schema`) never pays for asyncua or pymodbus unless such an adapter runs.

Optional capabilities are small Protocols, checked with `isinstance` on the built adapter (Telegraf's
lesson: one-method interfaces instead of a wide base class):

* `ReadsOnce`: `read_once()` connects, reads every signal once and closes (`check-config --online`).
* `HasPollDeadline`: `poll_deadline` bounds one `poll()` (the scheduler's backstop deadline).
* `HasEndpoint`: `endpoint()` is the `(host, port)` the adapter connects to over TCP, so the supervisor can
  probe that port while the machine is down (`probe_interval`) and reconnect as soon as it accepts.
* `Stateful`: `get_state()` / `set_state()` for state kept for the adapter across restarts (the interface
  is fixed here; the runtime does not store it yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import JsonValue

from emsedge.config import EquipmentBase

if TYPE_CHECKING:  # the adapter API (anyio, structlog) is imported by `build`, not by the registry
    from emsedge.adapters.base import Adapter, AdapterContext

ConfigT = TypeVar("ConfigT", bound=EquipmentBase)


@dataclass(frozen=True)
class AdapterSpec(Generic[ConfigT]):
    """One adapter, as its package registers it under the entry point group `emsedge.adapters`.

    `name` is what a config writes in `adapter:` and must equal the entry point's name; `config_model`
    declares `adapter: Literal["<name>"]`; `build(config, ctx)` returns a `PolledAdapter` or a
    `PushAdapter` for one piece of equipment (called again after the supervisor restarts it).
    """

    name: str
    config_model: type[ConfigT]
    build: Callable[[ConfigT, AdapterContext], Adapter]
    summary: str = ""
    """One line for people: what the adapter talks to."""


@runtime_checkable
class ReadsOnce(Protocol):
    """Capability: one read of every signal (connect, read, close), for `check-config --online` and probes."""

    async def read_once(self) -> list[dict[str, Any]]:
        """The readings (`emsedge.schema.reading()` dicts) of one complete read."""
        ...


@runtime_checkable
class HasPollDeadline(Protocol):
    """Capability: how long one `poll()` may take, in seconds, before the scheduler counts it as hung."""

    poll_deadline: float


@runtime_checkable
class HasEndpoint(Protocol):
    """Capability: the TCP `(host, port)` each session connects to; None when the equipment connects to us.

    With it, and with the session's connect errors marked `AdapterError(unreachable=True)` when the TCP
    connect itself failed, the supervisor checks that port every `probe_interval` while the machine is
    down and starts the next attempt as soon as it accepts, instead of waiting out a grown backoff.
    """

    def endpoint(self) -> tuple[str, int] | None: ...


@runtime_checkable
class Stateful(Protocol):
    """Capability: state stored durably for this adapter and handed back after a restart.

    The contract for the runtime that stores it: `get_state()` is read only after the records emitted
    before it were made durable (the state never runs ahead of the data); `set_state()` is called once,
    before the adapter's first session, with what was stored (or not at all).
    """

    def get_state(self) -> JsonValue: ...
    def set_state(self, state: JsonValue) -> None: ...


__all__ = ["AdapterSpec", "ConfigT", "HasEndpoint", "HasPollDeadline", "ReadsOnce", "Stateful"]
