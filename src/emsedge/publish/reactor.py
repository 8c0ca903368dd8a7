"""One owner of a CFX request listener's proton reactor thread: started, always joined, pipe closed last.

Both request transports (`cfx_requests.CfxRequestListener` through the broker, `cfx_listen.CfxDirectListener`
point to point) run each supervisor session as its own proton `Container` in one thread. Their lifecycle is
the same and lives here, once, so the two cannot drift apart:

* `ReactorHandler` is the handler's cross-thread half: the event loop hands commands over through a queue
  and `EventInjector.trigger` (thread-safe; every proton object is touched only in the reactor thread),
  `run` ends the session on any reactor error (never the process), and `ended`/`reason`/`ready` are the
  state the event loop reads.
* `run_reactor` is the session's event-loop half: start the thread, poll until the reactor ended (reporting
  readiness on the way), and, also on cancellation, submit `stop`, join the thread off the event loop and
  close the injector's pipe only once the thread is gone (closing it earlier could hand its file
  descriptors to another socket while the reactor still selects on them).

The publisher (`cfx.CfxPublisher`) keeps its own reactor: it runs for the whole process with proton's
reconnect, says goodbye on the link before it stops, and owns its `CommandInbox` across restarts; the inbox
(queue, injector, pipe closing) is the one both use.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import anyio

from emsedge.supervisor import SessionError

try:
    from proton.handlers import MessagingHandler
    from proton.reactor import ApplicationEvent, Container, EventInjector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the cfx request listeners need python-qpid-proton: pip install 'emsedge[cfx]'") from exc

POLL_INTERVAL = 0.05
"""Seconds between two looks at the reactor thread's state (a threading.Event cannot wake anyio)."""
JOIN_TIMEOUT = 10.0
"""Seconds to wait for the reactor thread to end after it was told to stop."""


class CommandInbox:
    """Commands from any thread, run in the reactor thread: a queue, and the `EventInjector` that wakes the
    reactor for it (thread-safe; every proton object is touched only in the reactor thread).

    Each container gets a new injector (`attach`); `close` closes its pipe and may only run once no reactor
    thread reads it (closing it earlier could hand its descriptors to another socket while it is selected)."""

    def __init__(self) -> None:
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.injector: Any = None

    def attach(self, container: Any) -> None:
        self.injector = EventInjector()
        container.selectable(self.injector)

    def submit(self, command: Callable[[], None]) -> None:
        """Any thread: run `command` in the reactor thread."""
        self._commands.put(command)
        if self.injector is not None:
            self.injector.trigger(ApplicationEvent("cfx_command"))

    def drain(self) -> None:
        """Reactor thread: run what was submitted."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def close(self) -> None:
        if self.injector is not None:
            for fd in self.injector.pipe:
                os.close(fd)
            self.injector = None


class ReactorHandler(MessagingHandler):  # proton ships no type hints: its base is Any
    """Proton event handler of one session; lives in the reactor thread only (except `submit`).

    Subclasses set `ready` when the session serves (it is cleared when the session ends) and override
    `_release` to close what the session holds open besides the container (a connection, an acceptor)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.inbox = CommandInbox()
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.reason: str | None = None
        self._container: Any = None

    def run(self, container: Any) -> None:
        """The reactor thread's target."""
        try:
            container.run()
        except Exception as exc:  # a proton or handler error ends this session, never the process
            self._end(f"reactor error: {type(exc).__name__}: {exc}")
        finally:
            self._end("stopped")

    def submit(self, command: Callable[[], None]) -> None:
        """Any thread: run `command` in the reactor thread."""
        self.inbox.submit(command)

    def on_cfx_command(self, event: Any) -> None:
        self.inbox.drain()

    def stop(self) -> None:
        self._end("stopped")
        self._release()
        if self._container is not None:
            self._container.stop()

    def _release(self) -> None:
        """Close what this session holds open besides the container (called by `stop`)."""

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ready.clear()
            self.ended.set()


def reactor_container(handler: ReactorHandler) -> Any:
    """A proton `Container` for `handler`, with the injector of its `inbox` attached (for `submit`)."""
    container = Container(handler)
    handler.inbox.attach(container)
    return container


async def run_reactor(
    handler: ReactorHandler,
    container: Any,
    *,
    thread_name: str,
    on_ready: Callable[[], Awaitable[None]],
    ended: str,
    ready_timeout: float | None = None,
    not_ready: str = "",
) -> NoReturn:
    """Run `container` in a thread named `thread_name` until its session ends, then raise `SessionError`
    (the handler's reason, else `ended`). Awaits `on_ready()` on every look while `handler.ready` is set;
    with `ready_timeout`, a session not ready within that many seconds ends with `SessionError(not_ready)`.
    Always (also on cancellation) stops the reactor, joins its thread and then closes the injector's pipe."""
    thread = threading.Thread(target=handler.run, args=(container,), name=thread_name, daemon=True)
    thread.start()
    try:
        deadline = None if ready_timeout is None else anyio.current_time() + ready_timeout
        while not handler.ended.is_set():
            if handler.ready.is_set():
                await on_ready()
            elif deadline is not None and anyio.current_time() > deadline:
                raise SessionError(not_ready)
            await anyio.sleep(POLL_INTERVAL)
        raise SessionError(handler.reason or ended)
    finally:
        with anyio.CancelScope(shield=True):
            handler.submit(handler.stop)
            await anyio.to_thread.run_sync(thread.join, JOIN_TIMEOUT)
            if not thread.is_alive():  # the reactor no longer reads the pipe: close it
                handler.inbox.close()
