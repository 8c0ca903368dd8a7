"""The HTTP application: the status page, its live stream, /healthz and /metrics (ASGI, on starlette).

Routes (GET and HEAD only; nothing here writes to equipment, config or the buffer):

* `/healthz`, `/metrics`: the contract of `emsedge.service` (same names, bodies and headers, header case
  included, `Connection: close`), answered by a raw ASGI handler so no framework reformats them.
* `/`: the page (static HTML/JS/CSS shipped in `emsedge/web/static`, no build step, nothing from outside).
* `/events`: server-sent events. Each message is one JSON snapshot of the line (cards, delivery, boards,
  and the detail of one machine when `?machine=` names it). A snapshot is built at most once per
  `PUSH_INTERVAL` for all clients asking the same thing, and sent only when something changed (at least
  every `HEARTBEAT` so ages move on).
* `/api/line`: the same snapshot once, for scripts and tests.

Bounds: at most `http.max_live_clients` streams (more get 503); a stream whose client does not take a
snapshot within `SEND_TIMEOUT` is ended, so a stuck browser holds at most one snapshot plus the socket's
buffer and never slows the gateway. Auth (`http.auth`): a bearer token or basic auth, compared in
constant time; every path needs it except `/healthz` asked from a loopback address (the container health
check). Secrets never appear in a response.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from emsedge.config import HttpConfig
from emsedge.config.core import read_secret
from emsedge.service import GatewayState, metrics_text
from emsedge.web.model import LineModel

log = structlog.get_logger("emsedge.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PUSH_INTERVAL = 0.5
"""Seconds between two snapshots of the live stream (a value shows within this plus the poll interval)."""
HEARTBEAT = 2.0
"""A snapshot goes out at least this often, so ages and times in state move on the page."""
SEND_TIMEOUT = 10.0
"""A client that does not take a snapshot within this is dropped."""
MAX_DETAIL_SIGNALS = 2000
"""Signals of one machine sent to the page; the rest are counted ("n more")."""
MAX_BOARDS = 50
STATIC = Path(__file__).with_name("static")


@dataclass
class OutputSource:
    """One output of the buffer (MQTT, CFX) as the delivery view reads it; evaluated at snapshot time."""

    connected: Callable[[], bool]
    drain_rate: Callable[[], float] = lambda: 0.0
    url: Callable[[], str | None] = lambda: None


@dataclass
class WebSources:
    """What the page reads besides the line model; callables are evaluated at snapshot time.

    `outputs` names every output the buffer serves, in the buffer's order; empty means MQTT alone, read from
    `state` and `drain_rate`.
    """

    state: GatewayState
    line: LineModel
    drain_rate: Callable[[], float] = lambda: 0.0
    replay_rate: float | None = None
    buffer_path: Path | None = None
    outputs: dict[str, OutputSource] = field(default_factory=dict)


class Credentials:
    """The configured secret, read once at start; `check(headers)` in constant time."""

    def __init__(self, config: HttpConfig) -> None:
        self.expected: bytes | None = None
        self.scheme = ""
        auth = config.auth
        if auth is None:
            return
        if auth.bearer_token_file is not None:
            token = read_secret(None, auth.bearer_token_file) or ""
            self.scheme, self.expected = "Bearer", b"Bearer " + token.encode()
        elif auth.basic_auth_file is not None:
            pair = read_secret(None, auth.basic_auth_file) or ""
            self.scheme, self.expected = "Basic", b"Basic " + base64.b64encode(pair.encode())

    @property
    def required(self) -> bool:
        return self.expected is not None

    def check(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self.expected is None:
            return True
        given = next((v for k, v in headers if k.lower() == b"authorization"), b"")
        return hmac.compare_digest(given.strip(), self.expected)


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


async def _raw(send: Send, code: int, body: bytes, content_type: str, *, head: bool = False,
               headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A response with exactly the headers `emsedge.service` always sent (the /healthz contract)."""
    await send({"type": "http.response.start", "status": code, "headers": [
        (b"Content-Type", content_type.encode()),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
        (b"Connection", b"close"),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": b"" if head else body})


class Snapshots:
    """Builds the JSON snapshots; one build per (machine, search) per PUSH_INTERVAL, shared by clients."""

    def __init__(self, sources: WebSources) -> None:
        self.sources = sources
        self._cache: dict[tuple[str | None, str | None], tuple[float, int, bytes]] = {}
        self._state_since: dict[str, tuple[str, float]] = {}

    def track_states(self) -> None:
        for equipment_id, h in list(self.sources.state.equipment.items()):
            self._since(equipment_id, h.state.value)

    def _since(self, equipment_id: str, state: str) -> float:
        """Wall time the equipment entered its current connection state, as first seen by the page."""
        seen = self._state_since.get(equipment_id)
        if seen is None or seen[0] != state:
            seen = self._state_since[equipment_id] = (state, time.time())
        return seen[1]

    def get(self, machine: str | None, search: str | None) -> tuple[int, bytes]:
        now = time.monotonic()
        key = (machine, search)
        hit = self._cache.get(key)
        version = self.sources.line.version
        if hit is not None and (now - hit[0] < PUSH_INTERVAL or (hit[1] == version and now - hit[0] < HEARTBEAT)):
            return hit[1], hit[2]
        body = orjson.dumps(self.build(machine, search), default=str)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = (now, version, body)
        return version, body

    def build(self, machine: str | None, search: str | None) -> dict[str, Any]:
        s = self.sources
        state = s.state
        now = time.time()
        _code, health = state.health()
        cards = []
        for equipment_id, h in sorted(state.equipment.items()):
            kind, adapter = state.equipment_info.get(equipment_id, ("?", "?"))
            cards.append({
                "id": equipment_id, "type": kind, "adapter": adapter, "state": h.state.value,
                "state_since": self._since(equipment_id, h.state.value), "last_error": h.last_error,
                "polls": h.polls, "poll_errors": h.poll_errors, "reconnects": h.reconnects, "values": h.values,
                "last_good_read": h.last_good_read, **s.line.machine_summary(equipment_id, now),
            })
        out: dict[str, Any] = {
            "now": now, "gateway": state.gateway_id, "version": state.version, "status": health["status"],
            "started_at": state.started_at, "machines": cards, "delivery": self.delivery(health),
            "boards": s.line.board_list(MAX_BOARDS, search),
            "uptime_s": health["uptime_s"], "loop_lag": self.loop_lag(),
        }
        if machine is not None:
            out["machine"] = {"id": machine, **s.line.machine_detail(machine, MAX_DETAIL_SIGNALS)}
        return out

    def loop_lag(self) -> dict[str, float] | None:
        probe = getattr(self.sources.state, "loop_lag", None)
        if probe is None:
            return None
        try:
            latest, longest, busy = probe()
        except Exception:
            return None
        return {"latest_s": latest, "max_s": longest, "busy_max_s": busy}

    def delivery(self, health: dict[str, Any]) -> dict[str, Any]:
        s = self.sources
        stats = s.state._buffer()
        buffer = health["buffer"]
        outputs = []
        per_output = getattr(stats, "outputs", None) or {}
        sources = s.outputs or {"mqtt": OutputSource(s.state.broker_connected, s.drain_rate, s.state.broker_url)}
        for name, source in sources.items():
            o = per_output.get(name)
            # Unacknowledged by this output: leased, waiting live, waiting in its replay backlog.
            pending = buffer["backlog"] if o is None else o.leased + o.unleased_live + o.unleased_backlog
            connected = bool(_safe(source.connected, False))
            rate_now = float(_safe(source.drain_rate, 0.0)) if connected else 0.0
            outputs.append({
                "name": name, "connected": connected, "url": _redact(_safe(source.url, None)),
                "backlog": pending, "replay_backlog": None if o is None else o.unleased_backlog,
                "oldest_age_s": buffer["oldest_age_s"],
                "drain_rate": round(rate_now, 1),
                "drain_eta_s": (0 if not pending else round(pending / rate_now, 1) if rate_now > 0 else None),
                "replay_rate": s.replay_rate,
            })
        disk = None
        if s.buffer_path is not None:
            disk = 0
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    disk += os.stat(f"{s.buffer_path}{suffix}").st_size
        return {
            "outputs": outputs, "writable": buffer["writable"], "records": buffer["backlog"],
            "bytes": buffer["bytes"], "disk_bytes": disk,
            "dropped": getattr(stats, "dropped_total", None) or buffer["evicted"] or 0,
            "dead_letters": buffer["dead_letters"] or 0, "last_error": buffer["last_error"],
            "published": state_messages(s.state),
        }


def state_messages(state: GatewayState) -> dict[str, int]:
    return {"buffered": state.messages_buffered, "published": state.messages_published,
            "dropped": state.messages_dropped}


def _safe(read: Callable[[], Any], default: Any) -> Any:
    """A stage being rewired (reload, an output starting) must not break the page."""
    try:
        return read()
    except Exception:
        return default


def _redact(url: str | None) -> str | None:
    """A broker URL without any user:password part."""
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class WebApp:
    """The ASGI application (see the module docstring)."""

    def __init__(self, sources: WebSources, config: HttpConfig) -> None:
        self.sources = sources
        self.config = config
        self.credentials = Credentials(config)
        self.snapshots = Snapshots(sources)
        self.live_clients = 0
        self._closing = anyio.Event()
        self.router = Starlette(routes=[
            Route("/", self.index, methods=["GET", "HEAD"]),
            Route("/api/line", self.api_line, methods=["GET", "HEAD"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        head = method == "HEAD"
        if self.credentials.required and not (path == "/healthz" and _loopback(scope)) \
                and not self.credentials.check(scope["headers"]):
            challenge = f'{self.credentials.scheme} realm="emsedge"'.encode()
            await _raw(send, 401, b"authentication required\n", "text/plain", head=head,
                       headers=[(b"WWW-Authenticate", challenge)])
            return
        if method not in ("GET", "HEAD"):
            await _raw(send, 405, b"method not allowed\n", "text/plain", headers=[(b"Allow", b"GET, HEAD")])
            return
        if path == "/healthz":
            code, body = self.sources.state.health()
            payload = json.dumps(body, separators=(",", ":")).encode() + b"\n"
            await _raw(send, code, payload, "application/json", head=head)
        elif path == "/metrics":
            await _raw(send, 200, metrics_text(self.sources.state), CONTENT_TYPE_LATEST, head=head)
        elif path == "/events":
            await self.events(scope, receive, send)
        elif path == "/" or path.startswith(("/static/", "/api/")):
            await self.router(scope, receive, send)
        else:
            await _raw(send, 404, b"not found\n", "text/plain", head=head)

    def close_streams(self) -> None:
        """End every live stream cleanly (the gateway stops): browsers reconnect to the next gateway."""
        self._closing.set()

    async def index(self, request: Request) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def api_line(self, request: Request) -> Response:
        machine = request.query_params.get("machine")
        snapshot = self.snapshots.build(machine, request.query_params.get("q"))
        return JSONResponse(snapshot, headers={"Cache-Control": "no-store"})

    async def events(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.live_clients >= self.config.max_live_clients:
            await _raw(send, 503, b"too many live clients\n", "text/plain", headers=[(b"Retry-After", b"5")])
            return
        request = Request(scope)
        machine = request.query_params.get("machine") or None
        search = (request.query_params.get("q") or "")[:100] or None
        self.live_clients += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),
            ]})
            async with anyio.create_task_group() as tg:
                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await self._stream(send, machine, search)
                tg.cancel_scope.cancel()
        finally:
            self.live_clients -= 1

    async def _stream(self, send: Send, machine: str | None, search: str | None) -> None:
        sent_version = -1
        sent_at = 0.0
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        while True:
            version, body = self.snapshots.get(machine, search)
            now = time.monotonic()
            if version != sent_version or now - sent_at >= HEARTBEAT:
                with anyio.move_on_after(SEND_TIMEOUT) as scope:
                    await send({"type": "http.response.body", "body": b"data: " + body + b"\n\n",
                                "more_body": True})
                if scope.cancelled_caught:
                    log.info("status page client too slow, dropped")
                    return
                sent_version, sent_at = version, now
            with anyio.move_on_after(PUSH_INTERVAL):
                await self._closing.wait()
            if self._closing.is_set():
                with anyio.move_on_after(1):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return


__all__ = ["Credentials", "OutputSource", "WebApp", "WebSources"]
