"""The IPC-CFX output: emsedge records as CFX envelopes on an AMQP 1.0 broker (python-qpid-proton).

Shape (one object owns everything proton runs):

    forwarder --publish_batch--> CfxPublisher --command queue + EventInjector--> proton reactor thread
                                      ^                                              |
                                      +------ concurrent.futures.Future per transfer -+  (broker disposition)

* Proton has no asyncio API. Its reactor runs in ONE thread that `CfxPublisher.run()` starts and joins
  (also on cancellation); every proton object is touched only in that thread. The event loop hands work
  over through a `reactor.CommandInbox` (a queue and `EventInjector.trigger`, thread-safe), and waits for
  a batch's dispositions in one worker thread (`anyio.to_thread`), bounded by `publish_timeout`.
* Delivery: a record counts as delivered only when the broker settled EVERY CFX transfer made from it as
  `accepted`. `rejected` is permanent (the forwarder dead-letters it after `MAX_PUBLISH_ATTEMPTS`,
  counted by the buffer); `released`, `modified`, a lost link and a timeout are retried. Replays give the
  same CFX `UniqueID`s (`cfx_mapping.unique_id`), so a receiver de-duplicates them.
* Liveness messages (`EndpointConnected` on each new link, `Heartbeat` every `heartbeat`, and
  `EndpointShuttingDown` on stop) are sent directly, not through the buffer: a heartbeat that arrives late
  is worse than none.
* The password is read once from the config (value, file or `EMSEDGE_CFX__PASSWORD`) and never logged.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import TaskStatus

from emsedge.publish import cfx_mapping as cm
from emsedge.publish.mqtt import PublishResult
from emsedge.schema import utc_iso

if TYPE_CHECKING:
    from emsedge.config import CfxConfig

try:
    from proton import Message, SSLDomain
    from proton.handlers import MessagingHandler
    from proton.reactor import Backoff, Container
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the cfx output needs python-qpid-proton: pip install 'emsedge[cfx]'") from exc

from emsedge.publish.reactor import CommandInbox

log = structlog.get_logger("emsedge.publish.cfx")
LINK_RETRY_DELAY = 1.0
"""Seconds before re-attaching a sender, or reconnecting, after the broker closed it (shutdown, missing
exchange). Drops without a close are retried by proton's own reconnect backoff."""

_OK = PublishResult(ok=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The broker's word on one transfer."""

    accepted: bool
    permanent: bool = False
    reason: str | None = None


_RETRY_LINK = Outcome(False, reason="link lost before the broker settled the transfer")


@dataclass(slots=True)
class CfxCounters:
    """What /metrics shows for the CFX output (read from here, never shadowed)."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    released: int = 0
    connects: int = 0
    heartbeats: int = 0


def handles_for(config: CfxConfig, site: str, line: str, equipment: Mapping[str, str | None]) -> dict[str, str]:
    """CFX handle of each equipment id: its `cfx_handle`, else `<handle_prefix or site.line>.<id>`."""
    prefix = config.handle_prefix or f"{site}.{line}"
    return {eid: handle or f"{prefix}.{eid}" for eid, handle in equipment.items()}


class CfxPublisher:
    """`forward.Output` for CFX: owns the proton reactor thread, the link, heartbeats and the counters."""

    def __init__(
        self,
        config: CfxConfig,
        handles: Mapping[str, str],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.handles = dict(handles)
        self.counters = CfxCounters()
        self._wall = wall_clock
        self._inbox = CommandInbox()
        self._connected = threading.Event()
        self._epoch = 0
        self._thread: threading.Thread | None = None
        self._handler: Any = None
        self._active_faults: dict[str, dict[str, dict[str, Any]]] = {}
        """handle -> FaultOccurrenceId -> Fault: what the heartbeat reports as active."""
        self.last_error: str | None = None
        self.requests_snapshot: Callable[[], dict[str, Any]] | None = None
        """The request listener's state (`CfxRequestListener.snapshot`), shown under `requests` when set."""
        self.listen_snapshot: Callable[[], dict[str, Any]] | None = None
        """The direct request listener's state (`CfxDirectListener.snapshot`), shown under `listen` when set."""

    # ---- forward.Output -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connection_epoch(self) -> int:
        return self._epoch

    @property
    def max_packet_size(self) -> int | None:
        return None

    async def wait_connected(self) -> None:
        # The reactor thread sets the link state; an anyio.Event cannot be set from a foreign thread.
        while not self._connected.is_set():  # noqa: ASYNC110
            await anyio.sleep(0.05)

    def snapshot(self) -> dict[str, Any]:
        """What /healthz and /metrics show (no secrets: the broker URL without user or password)."""
        snapshot = {
            "connected": self.connected,
            "broker": redact_url(self.config.broker),
            "address": self.config.address,
            "last_error": self.last_error,
            "counters": asdict(self.counters),
        }
        if self.requests_snapshot is not None:
            snapshot["requests"] = self.requests_snapshot()
        if self.listen_snapshot is not None:
            snapshot["listen"] = self.listen_snapshot()
        return snapshot

    def handle_of(self, equipment: str) -> str:
        handle = self.handles.get(equipment)
        if handle is None:
            prefix = self.config.handle_prefix or "emsedge"
            handle = self.handles[equipment] = f"{prefix}.{equipment}"
        return handle

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        """Map each stored payload to CFX and send it; returns once the broker settled every transfer."""
        del qos  # AMQP: every transfer is unsettled until the broker's disposition
        per_record: list[list[concurrent.futures.Future[Outcome]] | PublishResult] = []
        messages: list[tuple[cm.CfxMessage, concurrent.futures.Future[Outcome]]] = []
        for _topic, payload in items:
            try:
                record = cm.decode_payload(payload)
                handle = self.handle_of(str(record.get("equipment", "")))
                envelopes = cm.map_record(record, handle)
            except (ValueError, KeyError, TypeError) as exc:
                per_record.append(PublishResult(ok=False, permanent=True, reason=f"not mappable to CFX: {exc}"))
                continue
            futures = []
            for env in envelopes:
                future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
                messages.append((cm.to_message(env, self.config.codec), future))
                futures.append(future)
                self._track_fault(env)
            per_record.append(futures if futures else _OK)
        if messages:
            self._inbox.submit(lambda: self._handler.send_many(messages))
            all_futures = [f for _, f in messages]
            timeout = self.config.publish_timeout

            def wait() -> None:
                concurrent.futures.wait(all_futures, timeout=timeout)

            await anyio.to_thread.run_sync(wait, abandon_on_cancel=True)
        return [entry if isinstance(entry, PublishResult) else _combine(entry) for entry in per_record]

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the reactor thread, send heartbeats until cancelled, then say goodbye and join the thread."""
        self._start_thread()
        task_status.started()
        try:
            seen_epoch = 0
            next_beat = 0.0
            while True:
                if self._epoch != seen_epoch and self.connected:  # EndpointConnected went out on link up
                    seen_epoch = self._epoch
                    next_beat = time.monotonic() + self.config.heartbeat
                elif self.connected and time.monotonic() >= next_beat:
                    self._send_liveness("heartbeat")
                    next_beat = time.monotonic() + self.config.heartbeat
                await anyio.sleep(min(0.2, self.config.heartbeat))
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def close(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109 - a bounded goodbye
        """EndpointShuttingDown for every handle (best effort, bounded), stop the reactor, join its thread."""
        thread = self._thread
        if thread is None:
            return
        if self.connected:
            futures = self._send_liveness("shutting_down")
            await anyio.to_thread.run_sync(lambda: concurrent.futures.wait(futures, timeout=timeout))
        self._inbox.submit(self._handler.stop)
        await anyio.to_thread.run_sync(lambda: thread.join(timeout + 5.0))
        self._release_injector(thread)
        self._thread = None
        self._connected.clear()

    # ---- internals ----------------------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._handler = _Handler(self)
        container = Container(self._handler)
        self._inbox.attach(container)
        self._thread = threading.Thread(target=container.run, name="emsedge-cfx-reactor", daemon=True)
        self._thread.start()

    def _release_injector(self, thread: threading.Thread) -> None:
        """Close the injector's pipe once the reactor thread is gone (each start opens a new one)."""
        if not thread.is_alive():
            self._inbox.close()
    def _track_fault(self, env: dict[str, Any]) -> None:
        name, handle, body = env["MessageName"], env["Source"], env["MessageBody"]
        if name == cm.FAULT_OCCURRED:
            fault = body["Fault"]
            self._active_faults.setdefault(handle, {})[fault["FaultOccurrenceId"]] = fault
        elif name == cm.FAULT_CLEARED:
            self._active_faults.get(handle, {}).pop(body["FaultOccurrenceId"], None)

    def _send_liveness(self, kind: str) -> list[concurrent.futures.Future[Outcome]]:
        messages = self._liveness(kind)
        if messages:
            self._inbox.submit(lambda: self._handler.send_many(messages))
        return [f for _, f in messages]

    def _liveness(self, kind: str) -> list[tuple[cm.CfxMessage, concurrent.futures.Future[Outcome]]]:
        now = cm.cfx_timestamp(utc_iso(self._wall()))
        messages = []
        for handle in sorted(set(self.handles.values())):
            unique = str(uuid.uuid4())
            if kind == "connected":
                uri, address = announced_request_endpoint(self.config, handle)
                env = cm.endpoint_connected(handle, request_uri=uri, request_address=address, now=now, unique=unique)
            elif kind == "heartbeat":
                faults = list(self._active_faults.get(handle, {}).values())
                env = cm.heartbeat(handle, self.config.heartbeat, faults, now=now, unique=unique)
                self.counters.heartbeats += 1
            else:
                env = cm.endpoint_shutting_down(handle, now=now, unique=unique)
            future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
            messages.append((cm.to_message(env, self.config.codec), future))
        return messages

    # called from the reactor thread
    def on_link_up(self) -> None:
        self._epoch += 1
        self.counters.connects += 1
        self.last_error = None
        self._connected.set()
        log.info("cfx link up", broker=redact_url(self.config.broker), address=self.config.address)

    def on_link_down(self, reason: str) -> None:
        if self._connected.is_set():
            log.warning("cfx link lost; retrying", broker=redact_url(self.config.broker), reason=reason)
        self.last_error = reason
        self._connected.clear()


def probe(config: CfxConfig, timeout: float = 10.0) -> tuple[bool, str]:
    """`check-config --online`: connect, authenticate and attach a sender to `address`, send nothing.

    Uses the same connection code as the output (TLS, SASL), so what passes here passes at run time."""
    publisher = CfxPublisher(config, {})  # no handles: no EndpointConnected is announced by a check
    publisher._start_thread()
    thread = publisher._thread
    try:
        ok = publisher._connected.wait(timeout)
        detail = f"link attached to {config.address}" if ok else (publisher.last_error or f"no link in {timeout:g} s")
    finally:
        publisher._inbox.submit(publisher._handler.stop)
        if thread is not None:
            thread.join(5.0)
            publisher._release_injector(thread)
    return ok, detail


def _combine(futures: list[concurrent.futures.Future[Outcome]]) -> PublishResult:
    """A record is delivered when every CFX transfer made from it was accepted."""
    permanent = None
    for future in futures:
        if not future.done():
            return PublishResult(ok=False, reason="no disposition from the broker in time")
        outcome = future.result()
        if not outcome.accepted:
            if not outcome.permanent:
                return PublishResult(ok=False, reason=outcome.reason)
            permanent = outcome
    if permanent is not None:
        return PublishResult(ok=False, permanent=True, reason=permanent.reason)
    return _OK


def connection_options(config: CfxConfig, *, reconnect: Any = False) -> dict[str, Any]:
    """`Container.connect` keyword arguments for the broker: URL without credentials, SASL PLAIN from the
    config's user and secret, TLS (CA, client certificate and key) for amqps://. Shared by the output, the
    request listener and `check-config --online`, so what passes one passes all."""
    parts = urlsplit(config.broker)
    kwargs: dict[str, Any] = {
        "url": f"{parts.scheme}://{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}",
        "reconnect": reconnect,
        "heartbeat": 30,
    }
    if config.username is not None:
        kwargs["user"] = config.username
        kwargs["password"] = config.secret() or ""
        kwargs["allowed_mechs"] = "PLAIN"
        kwargs["allow_insecure_mechs"] = parts.scheme == "amqp"
    if parts.scheme == "amqps":
        domain = SSLDomain(SSLDomain.MODE_CLIENT)
        tls = config.tls
        if tls is not None and tls.ca_file is not None:
            domain.set_trusted_ca_db(str(tls.ca_file))
            domain.set_peer_authentication(
                SSLDomain.VERIFY_PEER_NAME if tls.verify_hostname else SSLDomain.VERIFY_PEER,
                str(tls.ca_file),
            )
        if tls is not None and tls.cert_file is not None and tls.key_file is not None:
            domain.set_credentials(str(tls.cert_file), str(tls.key_file), None)
        kwargs["ssl_domain"] = domain
    return kwargs


def amqp_message(message: cm.CfxMessage, durable: bool) -> Any:
    """The AMQP message for a CFX envelope, with the properties `AmqpUtilities.SetHeaders` sets:
    message-id = UniqueID, to = Target, reply-to = Source, correlation-id = RequestID, subject."""
    env = message.envelope
    amqp = Message(
        body=message.body,
        id=env["UniqueID"],
        subject=message.subject,
        content_type=cm.CONTENT_TYPE,
        content_encoding=message.content_encoding,
        durable=durable,
        address=None,
        reply_to=env["Source"],
        correlation_id=env["RequestID"],
        properties=dict(message.application_properties),
    )
    amqp.inferred = True  # bytes body goes out as an AMQP Data section, as the SDK sends it
    if env["Target"] is not None:
        amqp.address = env["Target"]
    return amqp


def request_address(config: CfxConfig, handle: str) -> str | None:
    """The address `handle` takes requests on (`RequestTargetAddress`), or None when requests are off."""
    return None if config.requests is None else config.requests.address.replace("{handle}", handle)


def listen_uri(config: CfxConfig) -> str | None:
    """`RequestNetworkUri` of the direct listener (`cfx.listen`): amqp://<host>:<port>, the host name of this
    machine when the listener binds every interface; None when the listener is off."""
    if config.listen is None:
        return None
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"amqp://{f'[{host}]' if ':' in host else host}:{port}"


def announced_request_endpoint(config: CfxConfig, handle: str) -> tuple[str | None, str | None]:
    """(`RequestNetworkUri`, `RequestTargetAddress`) that `EndpointConnected` names for `handle`: the direct
    listener when `cfx.listen` is on (the handle is its address, as in the SDK), else the broker address of
    `cfx.requests`, else none."""
    uri = listen_uri(config)
    if uri is not None:
        return uri, handle
    address = request_address(config, handle)
    return (redact_url(config.broker), address) if address is not None else (None, None)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


class _Handler(MessagingHandler):  # proton ships no type hints: its base is Any
    """Proton event handler; lives in the reactor thread only."""

    def __init__(self, owner: CfxPublisher) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True, peer_close_is_error=False)
        self._owner = owner
        self._container: Any = None
        self._connection: Any = None
        self._sender: Any = None
        self._pending: dict[Any, concurrent.futures.Future[Outcome]] = {}
        self._backlog: list[tuple[cm.CfxMessage, concurrent.futures.Future[Outcome]]] = []
        self._stopping = False

    def on_start(self, event: Any) -> None:
        self._container = event.container
        self._connect()

    def _connect(self) -> None:
        self._connection = self._container.connect(**connection_options(self._owner.config, reconnect=Backoff()))
        self._attach()

    def _attach(self) -> None:
        if self._stopping or self._connection is None:
            return
        self._sender = self._container.create_sender(self._connection, target=self._owner.config.address)

    def on_link_opened(self, event: Any) -> None:
        if event.link is self._sender or event.link == self._sender:
            self._owner.on_link_up()
            # Before any record of this link: the forwarder's first batch is still in the command queue.
            self.send_many(self._owner._liveness("connected"))

    def on_cfx_command(self, event: Any) -> None:
        self._owner._inbox.drain()

    def send_many(self, messages: list[tuple[cm.CfxMessage, concurrent.futures.Future[Outcome]]]) -> None:
        self._backlog.extend(messages)
        self._flush()

    def _flush(self) -> None:
        sender = self._sender
        if sender is None or not self._owner.connected:
            for _, future in self._backlog:
                _resolve(future, _RETRY_LINK)
            self._backlog.clear()
            return
        durable = self._owner.config.durable
        while self._backlog and sender.credit > 0:
            message, future = self._backlog.pop(0)
            delivery = sender.send(amqp_message(message, durable))
            self._pending[delivery.tag] = future
            self._owner.counters.sent += 1

    def on_sendable(self, event: Any) -> None:
        self._flush()

    def _settle(self, event: Any, outcome: Outcome) -> bool:
        """Resolve the transfer's future; False when it was resolved already. Proton calls `on_accepted` (and
        its siblings) on every disposition update of a delivery, and a broker may send two for one transfer
        (its state, then settled with the same state): the counters count transfers, once each."""
        future = self._pending.pop(event.delivery.tag, None)
        if future is None:
            return False
        _resolve(future, outcome)
        return True

    def on_accepted(self, event: Any) -> None:
        if self._settle(event, Outcome(True)):
            self._owner.counters.accepted += 1

    def on_rejected(self, event: Any) -> None:
        condition = event.delivery.remote.condition
        reason = f"rejected by broker: {condition.name}" if condition is not None else "rejected by broker"
        if self._settle(event, Outcome(False, permanent=True, reason=reason)):
            self._owner.counters.rejected += 1

    def on_released(self, event: Any) -> None:
        if self._settle(event, Outcome(False, reason="released by broker")):
            self._owner.counters.released += 1

    def on_modified(self, event: Any) -> None:
        if self._settle(event, Outcome(False, reason="modified by broker")):
            self._owner.counters.released += 1

    def on_settled(self, event: Any) -> None:
        self._settle(event, Outcome(False, reason="settled without outcome"))

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            _resolve(future, Outcome(False, reason=reason))
        self._pending.clear()
        for _, future in self._backlog:
            _resolve(future, Outcome(False, reason=reason))
        self._backlog.clear()

    def on_disconnected(self, event: Any) -> None:
        self._owner.on_link_down("disconnected")
        self._fail_pending("link lost before the broker settled the transfer")

    def on_transport_error(self, event: Any) -> None:
        condition = event.transport.condition
        self._owner.on_link_down(condition.description if condition is not None else "transport error")
        self._fail_pending("transport error")

    def on_connection_error(self, event: Any) -> None:
        self._connection_closed(event, "connection closed by broker")

    def on_connection_closing(self, event: Any) -> None:
        self._connection_closed(event, "connection closed by broker")

    def on_connection_closed(self, event: Any) -> None:
        self._connection_closed(event, "connection closed")

    def on_session_error(self, event: Any) -> None:
        # RabbitMQ ends the session with an error on shutdown; MessagingHandler then closes the connection.
        self._connection_closed(event, "session ended by broker")

    def _connection_closed(self, event: Any, reason: str) -> None:
        """A broker that closes the connection (e.g. on shutdown) ends proton's own reconnect: start over."""
        connection = event.connection
        if self._stopping or connection is None or connection != self._connection:
            return  # already handled, or an old connection's late event
        condition = connection.remote_condition
        if condition is not None:
            reason = f"{reason}: {condition.description or condition.name}"
        self._owner.on_link_down(reason)
        self._fail_pending(reason)
        connection.close()
        self._connection = None
        self._sender = None
        self._container.schedule(LINK_RETRY_DELAY, self)

    def on_link_error(self, event: Any) -> None:
        self.on_link_remote_close(event)

    def on_link_remote_close(self, event: Any) -> None:
        condition = event.link.remote_condition
        reason = f"{condition.name}: {condition.description}" if condition is not None else "link closed by broker"
        self._owner.on_link_down(reason)
        self._fail_pending(reason)
        if event.link is self._sender or event.link == self._sender:
            event.link.close()
            self._sender = None
            if not self._stopping:
                self._container.schedule(LINK_RETRY_DELAY, self)  # on_timer_task re-attaches

    def on_timer_task(self, event: Any) -> None:
        if self._stopping:
            return
        if self._connection is None:
            self._connect()
        elif self._sender is None:
            self._attach()

    def stop(self) -> None:
        self._stopping = True
        self._fail_pending("stopping")
        self._owner._connected.clear()
        if self._container is not None:
            self._container.stop()


def _resolve(future: concurrent.futures.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
