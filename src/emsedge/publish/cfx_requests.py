"""The CFX request listener: each handle answers the requests addressed to it through the broker.

Shape (one object owns the proton reactor of each connection it makes):

    Supervisor(cfx.backoff) --session--> CfxRequestListener._session --starts, stops, joins--> reactor thread
                                                                                                   |
        broker: <requests.address with {handle}> --request--> answer (cfx_mapping.respond) --> reply-to

* Addressing. The SDK's own request/response is point to point (`AmqpRequestProcessor`: the endpoint hosts
  an AMQP listener on `RequestNetworkUri` and the request processor at `RequestTargetAddress`); emsedge does
  that with `cfx.listen` (`cfx_listen.CfxDirectListener`). A gateway that should not open a port to the
  plant takes requests from the broker it already publishes to instead (this module): every handle reads
  its own source address (`cfx.requests.address` with `{handle}`,
  default `/queue/{handle}`), announced in `EndpointConnected` (unless `cfx.listen` is on) and in every response as
  `RequestNetworkUri` (the broker, without credentials) and `RequestTargetAddress`.
* Replies go to the request's AMQP `reply-to` when it is an address (it holds a `/`); a requester that
  leaves the SDK's default there (its own handle) gets the response on the output's `cfx.address`, where a
  topic exchange routes it by subject `<handle>.CFX.<Response>` and `Target` names the requester. The
  response carries `RequestID` (also as AMQP correlation-id), `Source` = the handle, `Target` = the
  requester (`AmqpRequestProcessor.InternalRequestProcessor`).
* A request is accepted (removed from its queue) only once the broker settled its response, so a request
  that was in flight when the link dropped is delivered again and answered again (same RequestID).
  A body that is not a CFX envelope is rejected (the broker dead-letters or drops it).
* Lifecycle. A session is one connection: its own proton `Container` in one thread, started and joined by
  the session (also on cancellation; `reactor.run_reactor`), without proton's reconnect. The session ends
  when the connection or a link is lost; the supervisor (`cfx.backoff`, jitter, log once per outage) starts
  the next one.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus

from emsedge import __version__
from emsedge.publish import cfx_mapping as cm
from emsedge.publish.cfx import amqp_message, connection_options, redact_url, request_address
from emsedge.publish.reactor import ReactorHandler, reactor_container, run_reactor
from emsedge.schema import utc_iso
from emsedge.supervisor import EquipmentHealth, Messages, Supervisor

if TYPE_CHECKING:
    from emsedge.config import CfxConfig

log = structlog.get_logger("emsedge.publish.cfx_requests")

REPLY_SENDERS = 64
"""Reply addresses with an open sender link; the least recently used one is closed beyond this."""
CREDIT = 10
"""Requests the broker may hand over per handle before we settled earlier ones."""


@dataclass(slots=True)
class RequestCounters:
    """What the listener did since start (read by tests and /healthz via `snapshot`)."""

    received: int = 0
    answered: int = 0
    not_supported: int = 0
    not_answered: int = 0
    """WhoIsThereRequests whose topic filter did not match this endpoint."""
    rejected: int = 0
    """Bodies that are not CFX envelopes."""
    reply_failed: int = 0
    """Responses the broker did not accept (e.g. a reply-to address that does not exist)."""


class CfxRequestListener:
    """Answers AreYouThere, WhoIsThere and GetEndpointInformation for every handle; NotSupported otherwise."""

    def __init__(
        self,
        config: CfxConfig,
        handles: Mapping[str, str],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if config.requests is None:
            raise ValueError("cfx.requests is not configured")
        self.config = config
        uri = redact_url(config.broker)
        self.endpoints = endpoint_infos(handles, uri, lambda handle: request_address(config, handle) or "")
        self.counters = RequestCounters()
        self.health = EquipmentHealth()
        self._wall = wall_clock
        self._supervisor = Supervisor(
            config.backoff,
            self.health,
            log.bind(broker=uri),
            stable_after=10.0,
            messages=Messages(
                connected="cfx requests: listening", lost="cfx requests: link lost; retrying",
                cannot_connect="cfx requests: cannot attach; retrying",
            ),
        )

    @property
    def connected(self) -> bool:
        return self.health.connected

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "state": str(self.health.state),
            "last_error": self.health.last_error,
            "counters": asdict(self.counters),
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep a session alive until cancelled (the supervisor's backoff between sessions)."""
        await self._supervisor.run(self._session, task_status=task_status)

    async def _session(self) -> None:
        handler = _Handler(self)
        await run_reactor(
            handler, reactor_container(handler), thread_name="emsedge-cfx-requests",
            on_ready=lambda: self._supervisor.connected(handles=len(self.endpoints)), ended="connection ended",
            ready_timeout=self.config.connect_timeout,
            not_ready=f"no request link in {self.config.connect_timeout:g} s",
        )

    def answer(self, handle: str, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """The response envelope to `request` for `handle` (None: not to be answered); counts it."""
        return answer(self.endpoints[handle], request, self.counters, self._wall)


def endpoint_infos(
    handles: Mapping[str, str], request_uri: str, address_of: Callable[[str], str]
) -> dict[str, cm.EndpointInfo]:
    """What a listener tells requesters about each handle (equipment id -> handle in, handle -> info out)."""
    return {
        handle: cm.EndpointInfo(
            handle=handle,
            request_uri=request_uri,
            request_address=address_of(handle),
            friendly_name=equipment,
            software_version=__version__,
        )
        for equipment, handle in sorted(handles.items())
    }


def answer(
    info: cm.EndpointInfo, request: Mapping[str, Any], counters: RequestCounters, wall: Callable[[], float]
) -> dict[str, Any] | None:
    """The response envelope to `request` for the handle `info` describes (None: not to be answered), counted
    in `counters`. The one place both transports (broker: `CfxRequestListener`, direct: `CfxDirectListener`)
    build their answers."""
    response = cm.respond(request, info, now=cm.cfx_timestamp(utc_iso(wall())), unique=str(uuid.uuid4()))
    if response is None:
        counters.not_answered += 1
    elif response["MessageName"] == cm.NOT_SUPPORTED_RESPONSE:
        counters.not_supported += 1
    return response


class _Handler(ReactorHandler):
    """Proton event handler of one session (`ready`: every request link is attached)."""

    def __init__(self, owner: CfxRequestListener) -> None:
        super().__init__(prefetch=CREDIT, auto_accept=False, auto_settle=True, peer_close_is_error=True)
        self._owner = owner
        self._connection: Any = None
        self._receivers: dict[str, str] = {}
        """receiver link name -> handle"""
        self._opened: set[str] = set()
        self._senders: OrderedDict[str, Any] = OrderedDict()
        self._reply_sessions: dict[Any, Any] = {}
        """reply session -> its one sender link"""
        self._pending: dict[tuple[str, Any], Any] = {}
        """(reply link name, delivery tag) -> the request delivery settled once the reply is."""

    def _release(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def _lost(self, reason: str) -> None:
        """The connection or a link is gone: end this session (the supervisor starts the next one)."""
        self._end(reason)
        if self._container is not None:
            self._container.stop()

    # ---- proton events -----------------------------------------------------------------------------

    def on_start(self, event: Any) -> None:
        self._container = event.container
        self._connection = self._container.connect(**connection_options(self._owner.config))
        for handle, info in self._owner.endpoints.items():
            name = f"emsedge-cfx-requests-{handle}-{uuid.uuid4().hex[:8]}"
            self._receivers[name] = handle
            self._container.create_receiver(self._connection, source=info.request_address, name=name)

    def on_link_opened(self, event: Any) -> None:
        name = event.link.name
        if name in self._receivers:
            self._opened.add(name)
            if len(self._opened) == len(self._receivers) and not self.ended.is_set():
                self.ready.set()

    def on_message(self, event: Any) -> None:
        handle = self._receivers.get(event.link.name)
        if handle is None:
            return
        delivery, message = event.delivery, event.message
        self._owner.counters.received += 1
        try:
            body = message.body  # a Data section arrives as a memoryview, an AmqpValue as str
            raw = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else str(body).encode()
            request = cm.decode_envelope(raw, message.content_encoding)
        except (ValueError, TypeError, OSError) as exc:
            self._owner.counters.rejected += 1
            log.warning("cfx requests: not a CFX envelope; rejected", handle=handle, error=str(exc))
            self.reject(delivery)
            return
        response = self._owner.answer(handle, request)
        if response is None:
            self.accept(delivery)
            return
        reply_to = message.reply_to
        address = reply_to if isinstance(reply_to, str) and "/" in reply_to else self._owner.config.address
        sender = self._sender(address)
        out = sender.send(amqp_message(cm.to_message(response, self._owner.config.codec), durable=False))
        self._pending[(sender.name, out.tag)] = delivery

    def _sender(self, address: str) -> Any:
        """The reply link to `address`, each in its own AMQP session: a broker that ends the session over a
        bad reply address (RabbitMQ does for a missing exchange) takes only that link with it, never the
        request links (else one request with a bad reply-to would end every session it is redelivered to)."""
        sender = self._senders.pop(address, None)
        if sender is None:
            session = self._connection.session()
            session.open()
            sender = session.sender(f"emsedge-cfx-reply-{uuid.uuid4().hex[:12]}")
            sender.target.address = address
            sender.open()
            self._reply_sessions[session] = sender
            if len(self._senders) >= REPLY_SENDERS:
                _, oldest = self._senders.popitem(last=False)
                self._close_reply(oldest)
        self._senders[address] = sender
        return sender

    def _close_reply(self, sender: Any) -> None:
        session = sender.session
        self._reply_sessions.pop(session, None)
        sender.close()
        session.close()

    def _replied(self, event: Any, ok: bool) -> None:
        request = self._pending.pop((event.link.name, event.delivery.tag), None)
        if request is None:
            return
        if ok:
            self._owner.counters.answered += 1
        else:
            self._owner.counters.reply_failed += 1
        self.accept(request)  # answered, or not answerable: either way this request is done

    def on_accepted(self, event: Any) -> None:
        self._replied(event, ok=True)

    def on_rejected(self, event: Any) -> None:
        self._replied(event, ok=False)

    def on_released(self, event: Any) -> None:
        self._replied(event, ok=False)

    def on_modified(self, event: Any) -> None:
        self._replied(event, ok=False)

    def on_link_error(self, event: Any) -> None:
        link = event.link
        condition = link.remote_condition
        reason = f"{condition.name}: {condition.description}" if condition is not None else "link closed"
        if link.name in self._receivers:
            self._lost(f"request link to {self._owner.endpoints[self._receivers[link.name]].request_address}: "
                       f"{reason}")
            return
        self._forget_sender(link, reason)

    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        if link.remote_condition is not None:
            return  # on_link_error has it
        if link.name in self._receivers:
            self._lost("request link closed by the broker")
        else:
            self._forget_sender(link, "reply link closed by the broker")

    def _forget_sender(self, link: Any, reason: str) -> None:
        """A reply link the broker refused or closed: drop it (the next reply there attaches anew) and
        settle the requests whose responses it still held (they cannot be answered on it)."""
        for address, sender in list(self._senders.items()):
            if sender.name == link.name:
                del self._senders[address]
                log.warning("cfx requests: reply address refused", address=address, reason=reason)
        for key in [k for k in self._pending if k[0] == link.name]:
            self._owner.counters.reply_failed += 1
            self.accept(self._pending.pop(key))
        self._close_reply(link)

    def on_session_error(self, event: Any) -> None:
        sender = self._reply_sessions.get(event.session)
        if sender is not None:
            condition = event.session.remote_condition
            self._forget_sender(sender, condition.description or condition.name if condition else "session ended")
            return
        self._lost("session ended by the broker")

    def on_connection_error(self, event: Any) -> None:
        condition = event.connection.remote_condition
        self._lost(f"connection closed by broker: {condition.description or condition.name}"
                   if condition is not None else "connection closed by broker")

    def on_transport_error(self, event: Any) -> None:
        condition = event.transport.condition
        self._lost(condition.description if condition is not None else "transport error")

    def on_disconnected(self, event: Any) -> None:
        self._lost("disconnected")
