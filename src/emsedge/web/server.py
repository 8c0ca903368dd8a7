"""The HTTP listener: uvicorn's `Server` inside the runtime's task group, serving `emsedge.web.app`.

Why uvicorn + starlette: both are small, widely used and kept up to date, run on the asyncio loop the
gateway already uses (no thread), and take TLS, HTTP/1.1 parsing and streaming off our hands; the
hand-written server in `emsedge.service` could not grow a page, a live stream and auth safely.

What this module adds around them, because a gateway must outlive its clients (issue 12):

* the listening socket is bound here, so a port that cannot be bound is one error line and the gateway
  runs on without the listener (started with None), exactly as before;
* `http.max_connections`: a connection beyond it is closed at once, before it costs a request;
* a connection that sends no request within `IDLE_TIMEOUT` is closed (uvicorn only times out idle
  connections between requests);
* accept errors (EMFILE, ENFILE, ECONNABORTED): asyncio's server logs them and retries after a pause
  without ever raising; the repeat log lines are folded to one per `ACCEPT_LOG_EVERY`;
* uvicorn does not touch signal handlers (the runtime owns SIGTERM/SIGHUP) nor the logging config.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import structlog
import uvicorn
from anyio.abc import TaskStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from emsedge.config import HttpConfig
from emsedge.errors import ConfigError
from emsedge.service import GatewayState, parse_listen
from emsedge.web.app import WebApp, WebSources
from emsedge.web.model import LineModel

log = structlog.get_logger("emsedge.web")

IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay open without sending a request (before the first and between two)."""
ACCEPT_LOG_EVERY = 60.0
SHUTDOWN_GRACE = 1
STATE_SAMPLE = 0.5
"""Seconds between two looks at the equipment states, to tell the page since when each one holds."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the runtime owns the signals; uvicorn must not install handlers of its own


def _protocol(max_connections: int) -> type[H11Protocol]:
    class BoundedH11(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.abort()  # at once: no request is read, nothing is queued
                return
            self.timeout_keep_alive_task = self.loop.call_later(IDLE_TIMEOUT, self.timeout_keep_alive_handler)

    return BoundedH11


class _AcceptErrorsOnce(logging.Filter):
    """asyncio logs every failed accept() (EMFILE...) and retries a second later: keep one per minute."""

    def __init__(self) -> None:
        super().__init__()
        self.last = -ACCEPT_LOG_EVERY

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept() out of system resource" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self.last < ACCEPT_LOG_EVERY:
            return False
        self.last = now
        return True


_accept_filter = _AcceptErrorsOnce()


class _DroppedStreams(logging.Filter):
    """A live stream ended for a too slow client is logged by us once; uvicorn need not call it an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ASGI callable returned without completing response" not in record.getMessage()


_dropped_filter = _DroppedStreams()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_http(
    listen: str, state: GatewayState, *, config: HttpConfig | None = None, sources: WebSources | None = None,
    task_status: TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page, /healthz and /metrics until cancelled; reports the bound port (None: not bound)."""
    config = config or HttpConfig(listen=listen, allow_insecure=True)
    host, port = parse_listen(listen)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        log.error("http listener not started: cannot bind; the status page, /healthz and /metrics are unavailable",
                  address=listen, error=exc.strerror or str(exc))
        task_status.started(None)
        return
    try:
        app = WebApp(sources or WebSources(state, LineModel()), config)
    except ConfigError as exc:  # the auth secret file became unreadable since check-config
        sock.close()
        log.error("http listener not started: cannot read its auth secret", address=listen,
                  error="; ".join(exc.problems))
        task_status.started(None)
        return
    uconfig = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", http=_protocol(config.max_connections),
        ws="none", server_header=False, date_header=False, timeout_keep_alive=int(IDLE_TIMEOUT),
        timeout_graceful_shutdown=SHUTDOWN_GRACE, backlog=128,
        ssl_certfile=str(config.tls.cert_file) if config.tls else None,
        ssl_keyfile=str(config.tls.key_file) if config.tls else None,
    )
    try:
        uconfig.load()  # TLS files are read here: a bad certificate is one error line, not a crash
    except Exception as exc:
        sock.close()
        log.error("http listener not started: cannot load its TLS certificate or key", address=listen,
                  error=f"{type(exc).__name__}: {exc}")
        task_status.started(None)
        return
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.setLevel(logging.WARNING)
    if _dropped_filter not in uvicorn_log.filters:
        uvicorn_log.addFilter(_dropped_filter)
    asyncio_log = logging.getLogger("asyncio")
    if _accept_filter not in asyncio_log.filters:
        asyncio_log.addFilter(_accept_filter)
    server = _Server(uconfig)
    bound = sock.getsockname()[1]
    scheme = "https" if config.tls else "http"
    log.info("http listening", address=f"{host}:{bound}", page=f"{scheme}://{_url_host(host)}:{bound}/",
             paths="/ /healthz /metrics", auth=app.credentials.scheme or None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_track_states, app)
        task_status.started(bound)
        try:
            await server._serve([sock])
        finally:
            with anyio.CancelScope(shield=True):
                app.close_streams()
                if server.started:
                    server.should_exit = True
                    await server.shutdown([sock])
                sock.close()
            tg.cancel_scope.cancel()


async def _track_states(app: WebApp) -> None:
    while True:
        app.snapshots.track_states()
        await anyio.sleep(STATE_SAMPLE)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


__all__ = ["serve_http"]
