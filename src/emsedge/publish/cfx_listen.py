"""The direct CFX request listener (`cfx.listen`): requesters connect to the gateway point to point, as to
an endpoint built with the IPC-CFX SDK.

Shape (one object owns the proton reactor of the listening socket and every connection accepted on it):

    Supervisor(cfx.backoff) --session--> CfxDirectListener._session --binds, starts, stops, joins--> reactor thread
                                                                                                       |
        requester --connects to amqp://<host>:<port>--> sender link to <handle> --request--> answer --> reply link

* Addressing, as the SDK (`AmqpRequestProcessor.Open`: a `ContainerHost` on `RequestUri`, the request
  processor registered at the endpoint's handle; `AmqpCFXEndpoint.ExecuteRequestAsync`): the requester
  attaches a receiver with source = the handle and target = a fresh reply address, and a sender with
  target = the handle, and sends the request with `reply_to` = that reply address. The response goes back
  on the receiver link whose target is the request's `reply_to`, on the same connection. A receiver with a
  dynamic source (the usual AMQP request/response client) gets a generated address to use as `reply_to`.
  A sender without a target (anonymous) addresses each request by its AMQP `to`.
* Answers come from `cfx_requests.answer` (the same envelopes, RequestID echoed also as correlation-id,
  Source = the handle, Target = the requester, NotSupportedResponse for anything else): one place for the
  answers, two transports. A request is accepted once its response is handed to the reply link (the SDK's
  `RequestContext.Complete`); a body that is not a CFX envelope, a handle this gateway does not speak for,
  and a request whose `reply_to` names no reply link of its connection are rejected with an AMQP error.
* Lifecycle. A session binds the listening socket (a port in use fails the session with the OS's error,
  logged by the supervisor, which retries after `cfx.backoff`), runs its own proton `Container` in one
  thread, started and always joined by the session (also on cancellation; `reactor.run_reactor`), which
  closes the socket. A requester's connection ending never ends the session; a reactor error does.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus

from emsedge.publish import cfx_mapping as cm
from emsedge.publish.cfx import amqp_message, listen_uri
from emsedge.publish.cfx_requests import RequestCounters, answer, endpoint_infos
from emsedge.publish.reactor import ReactorHandler, reactor_container, run_reactor
from emsedge.supervisor import EquipmentHealth, Messages, SessionError, Supervisor

if TYPE_CHECKING:
    from emsedge.config import CfxConfig

try:
    from proton import Condition
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the cfx listener needs python-qpid-proton: pip install 'emsedge[cfx]'") from exc

log = structlog.get_logger("emsedge.publish.cfx_listen")

THREAD_NAME = "emsedge-cfx-listen"
CREDIT = 100
"""Requests a requester may send per link before we answered earlier ones (the SDK's request processor: 100)."""


@dataclass(slots=True)
class ListenCounters(RequestCounters):
    """RequestCounters, plus what only a listener sees."""

    connections: int = 0
    """Requester connections accepted since start."""
    refused_links: int = 0
    """Links attached to an address that is no handle of this gateway."""


class CfxDirectListener:
    """Answers AreYouThere, WhoIsThere and GetEndpointInformation for every handle on `cfx.listen`."""

    def __init__(
        self,
        config: CfxConfig,
        handles: Mapping[str, str],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if config.listen is None:
            raise ValueError("cfx.listen is not configured")
        self.config = config
        self.address = config.listen
        self.request_uri = listen_uri(config) or ""
        self.endpoints = endpoint_infos(handles, self.request_uri, lambda handle: handle)  # the SDK's address
        self.counters = ListenCounters()
        self.health = EquipmentHealth()
        self.open_connections = 0
        self._wall = wall_clock
        self._supervisor = Supervisor(
            config.backoff,
            self.health,
            log.bind(listen=self.address),
            stable_after=10.0,
            messages=Messages(
                connected="cfx listen: answering requests", lost="cfx listen: listener failed; retrying",
                cannot_connect="cfx listen: cannot listen; retrying",
            ),
        )

    @property
    def listening(self) -> bool:
        return self.health.connected

    def snapshot(self) -> dict[str, Any]:
        return {
            "listening": self.listening,
            "address": self.address,
            "request_uri": self.request_uri,
            "state": str(self.health.state),
            "last_error": self.health.last_error,
            "open_connections": self.open_connections,
            "counters": asdict(self.counters),
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the listener up until cancelled (the supervisor's backoff between sessions)."""
        await self._supervisor.run(self._session, task_status=task_status)

    def _bind_url(self) -> str:
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"  # ":port": every interface, as for http.listen
        return f"amqp://{f'[{host}]' if ':' in host else host}:{port}"

    def _probe(self) -> None:
        """Bind the address once with the socket options proton uses, and let go: an address in use or not
        of this machine fails here with the OS's error (proton's own bind leaks its socket when it fails)."""
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))

    async def _session(self) -> None:
        try:
            self._probe()
        except OSError as exc:
            raise SessionError(f"cannot listen on {self.address}: {exc.strerror or exc}") from exc
        handler = _Handler(self)
        container = reactor_container(handler)
        container.container_id = f"emsedge-{uuid.uuid4().hex[:8]}"
        try:
            handler.acceptor = container.listen(self._bind_url())
        except Exception as exc:  # proton raises its IOError/OSError subclasses with the OS's text
            handler.inbox.close()  # no reactor thread was started
            raise SessionError(f"cannot listen on {self.address}: {exc}") from exc
        try:
            await run_reactor(
                handler, container, thread_name=THREAD_NAME,
                on_ready=lambda: self._supervisor.connected(listen=self.address, handles=len(self.endpoints)),
                ended="listener ended",
            )
        finally:
            self.open_connections = 0

    def answer(self, handle: str, request: Mapping[str, Any]) -> dict[str, Any] | None:
        return answer(self.endpoints[handle], request, self.counters, self._wall)


class _Handler(ReactorHandler):
    """Proton event handler of one listening session (`ready`: the reactor runs and the socket listens)."""

    def __init__(self, owner: CfxDirectListener) -> None:
        super().__init__(prefetch=CREDIT, auto_accept=False, auto_settle=True, peer_close_is_error=False)
        self._owner = owner
        self.acceptor: Any = None
        self._replies: dict[tuple[Any, str], Any] = {}
        """(connection, reply address) -> the sender link responses to that address go out on."""
        self._connections: set[Any] = set()
        self._refused: set[Any] = set()
        """Links attached to an address that is no handle here: closed with amqp:not-found once opened."""

    def _release(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()

    # ---- proton events -----------------------------------------------------------------------------

    def on_start(self, event: Any) -> None:
        self._container = event.container
        self.ready.set()

    def on_connection_opening(self, event: Any) -> None:
        self._owner.counters.connections += 1
        self._connections.add(event.connection)
        self._owner.open_connections = len(self._connections)
        log.debug("cfx listen: requester connected", container=event.connection.remote_container)

    def on_link_opening(self, event: Any) -> None:
        """A requester attaches a link (proton opens it after this returns): mirror its addresses."""
        link = event.link
        endpoints = self._owner.endpoints
        if link.is_sender:  # the requester receives: its responses go out here
            remote_source, remote_target = link.remote_source, link.remote_target
            if remote_source.dynamic:
                reply = f"{link.connection.remote_container or 'requester'}-{uuid.uuid4()}"
                link.source.address = reply
            else:
                link.source.copy(remote_source)
                link.target.copy(remote_target)
                reply = remote_target.address
                if remote_source.address not in endpoints:
                    self._refused.add(link)
                    return
            if reply:
                self._replies[(link.connection, reply)] = link
        else:  # the requester sends requests here
            link.target.copy(link.remote_target)
            address = link.remote_target.address
            if address is not None and address not in endpoints:
                self._refused.add(link)

    def on_link_opened(self, event: Any) -> None:
        link = event.link
        if link in self._refused:
            self._refused.discard(link)
            self._owner.counters.refused_links += 1
            address = link.remote_source.address if link.is_sender else link.remote_target.address
            link.condition = Condition("amqp:not-found", f"no CFX endpoint {address!r} here")
            link.close()

    def on_message(self, event: Any) -> None:
        link, delivery, message = event.link, event.delivery, event.message
        counters = self._owner.counters
        counters.received += 1
        handle = link.remote_target.address or message.address
        if handle not in self._owner.endpoints:
            counters.rejected += 1
            self._reject(delivery, "amqp:not-found", f"no CFX endpoint {handle!r} here")
            return
        try:
            body = message.body  # a Data section arrives as a memoryview, an AmqpValue as str
            raw = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else str(body).encode()
            request = cm.decode_envelope(raw, message.content_encoding)
        except (ValueError, TypeError, OSError) as exc:
            counters.rejected += 1
            log.warning("cfx listen: not a CFX envelope; rejected", handle=handle, error=str(exc))
            self._reject(delivery, "amqp:decode-error", "not a CFX envelope")
            return
        reply_to = message.reply_to
        sender = self._replies.get((link.connection, reply_to)) if isinstance(reply_to, str) else None
        if sender is None or sender.state & sender.LOCAL_CLOSED:
            counters.reply_failed += 1
            self._reject(delivery, "amqp:precondition-failed",
                         f"reply_to {reply_to!r} names no receiver link of this connection")
            return
        response = self._owner.answer(handle, request)
        if response is not None:
            sender.send(amqp_message(cm.to_message(response, self._owner.config.codec), durable=False))
            counters.answered += 1
        self.accept(delivery)

    def _reject(self, delivery: Any, name: str, description: str) -> None:
        delivery.local.condition = Condition(name, description)
        self.reject(delivery)

    def _forget(self, link: Any) -> None:
        for key in [k for k, v in self._replies.items() if v is link]:
            del self._replies[key]
        self._refused.discard(link)

    def on_link_closing(self, event: Any) -> None:
        self._forget(event.link)

    def on_link_closed(self, event: Any) -> None:
        self._forget(event.link)

    def on_link_error(self, event: Any) -> None:
        self._forget(event.link)

    def _connection_gone(self, connection: Any) -> None:
        for key in [k for k in self._replies if k[0] is connection]:
            del self._replies[key]
        self._connections.discard(connection)
        self._owner.open_connections = len(self._connections)

    def on_connection_closed(self, event: Any) -> None:
        self._connection_gone(event.connection)

    def on_connection_closing(self, event: Any) -> None:
        self._connection_gone(event.connection)

    def on_transport_closed(self, event: Any) -> None:
        if event.connection is not None:
            self._connection_gone(event.connection)

    def on_transport_error(self, event: Any) -> None:
        condition = event.transport.condition
        log.debug("cfx listen: requester connection failed",
                  error=condition.description if condition is not None else "transport error")
