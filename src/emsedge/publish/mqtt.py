"""MQTT publisher: paho-mqtt 2.x driven from the asyncio event loop; a result is ok only after PUBACK.

Why this shape
--------------
The buffer deletes a record only when the broker has it. So `publish_batch()` resolves each message on
the broker's PUBACK (QoS 1) or PUBCOMP (QoS 2) for that message id, the aiomqtt pattern, but pipelined:
up to a window of messages is on the wire at once (measured on this machine class: paho driven from the
event loop with an application window is the fastest correct way, about 18k msg/s; paho's own thread
with `max_inflight_messages_set(n)` is 2-4x slower because it scans its in-flight list on every ack).

paho keeps unacknowledged messages in memory and re-sends them on reconnect, and its queue is unbounded.
Both would fight the durable buffer (duplicates, unbounded memory: aiomqtt's and Vector's lessons), so
every connection gets a *fresh* paho client that is thrown away when the connection ends, and the
buffer alone re-sends (at-least-once; consumers de-duplicate by message `id`).

Invariants
----------
* A result is `ok` only after the PUBACK/PUBCOMP for its message id arrived on the connection that sent
  it; QoS 0 is ok when its bytes were written to the socket. Duplicate PUBACKs and PUBACKs for unknown
  ids are ignored (paho drops them before they reach us).
* When a connection ends (lost, keepalive, PUBACK timeout, clean close) every message it still waits for
  is reported `ok=False` (transient) at once, and its paho client is discarded: nothing is re-sent by
  paho, and paho never holds more than one window of messages.
* At most `window` messages are outstanding per connection: `mqtt.max_inflight`, capped by the broker's
  Receive Maximum (MQTT 5 CONNACK) and by the 16-bit message id space.
* A permanent result (`permanent=True`) means the broker will refuse this message however often it is
  sent: an MQTT 5 PUBACK reason code the table below marks permanent, a packet over the broker's Maximum
  Packet Size, a QoS over its Maximum QoS, or a topic paho cannot encode. Everything else is transient,
  and the forwarder retries it with backoff instead of dead-lettering it.
* The retained `online` status is published (QoS 1, PUBACK awaited) after every CONNACK and before the
  publisher reports `connected`, so it precedes data on every connection; the retained `offline` status is
  the last will, and is also published explicitly before a clean DISCONNECT.
* The TCP connect and the TLS handshake run on the event loop (cancellable, under `connect_timeout`);
  paho only receives an already connected socket. No thread is started. TLS is chosen by the URL scheme
  alone, with certificate and hostname verification on (hostname only off by explicit opt-out), and a list
  of brokers is either all TLS or all plain: there is no plaintext fallback.
* The password lives only in a redacting wrapper and inside paho's client object; it is never in a log
  field, an exception message or a repr.
* Logging happens once per state change (connected, lost, failing over, a new connect error), never per
  message.

MQTT 5 failure reason codes, as classified by `is_permanent_reason_code` (MQTT 5.0 §2.4, §3.4.2.1; a
temporary condition is retried with backoff, never dead-lettered). A PUBACK may carry only 0x80, 0x83,
0x87, 0x90, 0x91, 0x97 and 0x99; the others reach us in a CONNACK or DISCONNECT (paho treats them in a
PUBACK as a protocol error and drops the link, which fails the message transiently anyway), and are
listed so that one table answers "is this code worth retrying":

  ====== ============================= ========== ============================================================
  code   name                          result     why
  ====== ============================= ========== ============================================================
  0x80   Unspecified error             permanent  the broker gives no reason; the forwarder still tries
                                                  MAX_PUBLISH_ATTEMPTS times before it dead-letters (counted)
  0x83   Implementation specific error permanent  a broker plugin refused this message
  0x87   Not authorized                permanent  ACL: the same topic stays refused
  0x90   Topic Name invalid            permanent
  0x95   Packet too large              permanent  (also refused before sending, from CONNACK Maximum Packet Size)
  0x99   Payload format invalid        permanent
  0x9A   Retain not supported          permanent
  0x9B   QoS not supported             permanent
  0x88   Server unavailable            transient  the broker (or its cluster) is temporarily unable
  0x89   Server busy                   transient  "try later" by definition
  0x8B   Server shutting down          transient  another broker or the same one after restart will take it
  0x8D   Keep Alive timeout            transient  a link problem, not a message problem
  0x8E   Session taken over            transient  a link problem, not a message problem
  0x91   Packet Identifier in use      transient  an id race; a re-send gets a new id
  0x93   Receive Maximum exceeded      transient  flow control: fewer messages in flight will pass
  0x96   Message rate too high         transient  rate limit: backing off is the cure
  0x97   Quota exceeded                transient  rate/volume quota: passes once the quota refills
  0x9C   Use another server            transient  failover moves on
  0x9D   Server moved                  transient  failover moves on
  0x9F   Connection rate exceeded      transient  rate limit
  other  any other code >= 0x80        permanent  unknown failures are not retried forever (but counted)
  ====== ============================= ========== ============================================================

Reconnects: `run()` is a `Supervisor` (`emsedge.supervisor`) around `_session()`: one connection's
life. The supervisor owns the backoff, its reset after `STABLE_AFTER`, and logging once per state change
("mqtt connect failed" once per broker and reason per outage, "mqtt connection lost", "mqtt connected");
`health` holds the link's `EquipmentState`. paho only ever handles the socket of one connection.

Reconnect after an outage: the backoff grows while nothing connects (to 30 s by default), so a broker
that comes back would wait up to a whole delay for the next attempt. While the last attempt failed at
the TCP connect itself (refused, unreachable, timed out), the publisher checks every broker's port every
`mqtt.probe_interval` (a TCP connect and close, no TLS, no MQTT; jittered 0.5-1.5x) and cuts the wait
short when one accepts: the first message follows within about one probe interval. After a failure
later than TCP (TLS, CONNACK refused, dropped before `STABLE_AFTER`) the backoff alone applies, so a
broker (or a TCP load balancer) that accepts and then refuses is not hammered; it restarts from
`backoff.initial` when the probe has just seen the port open (a cluster node that accepts before it
serves MQTT is retried within seconds).

Failover: `mqtt.url` may be a list (the nodes of a broker cluster). Each attempt is a *round*: every
broker once, starting at the current one, without a delay between brokers; the supervisor's backoff
(growing while nothing connects, and across connections that last less than `STABLE_AFTER`) lies
between whole rounds. A lost connection starts the next round at the *next* broker, so a gateway whose
cluster node stops moves to another node at its next attempt. The publisher stays on the broker it is
connected to: it does not move back when the previous one returns (no flapping; at-least-once holds
either way). `failovers` counts connections made to a different broker than the previous one
(`emsedge_mqtt_failovers_total`); `current_url` names the broker in use (/healthz, /metrics).

MQTT 5 refused: a broker that speaks only 3.1.1 (NATS) answers an MQTT 5 CONNECT with "Unsupported
protocol version". The publisher logs one error naming the fix (`mqtt.protocol: "3.1.1"`) once per run
and never downgrades by itself; when every broker of the list refuses so, the link is `failed`
(permanent: retried at `backoff.max`).

Only the asyncio backend of anyio is supported (paho's socket is registered with `loop.add_reader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import anyio
import paho.mqtt.client as paho
import structlog
from anyio.abc import TaskStatus
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from emsedge.compat import PahoClient as _PahoClient
from emsedge.config import MqttConfig, read_secret
from emsedge.errors import AdapterError, ConfigError
from emsedge.supervisor import EquipmentHealth, Messages, SessionError, Supervisor, wait_until_reachable

__all__ = ["MqttPublisher", "PublishResult"]

log = structlog.get_logger("emsedge.publish")

CLOSE_TIMEOUT: Final = 3.0
"""Seconds a clean stop may spend publishing the offline status and sending DISCONNECT."""

STABLE_AFTER: Final = 10.0
"""A connection that lasted this long resets the reconnect backoff; a shorter one keeps it growing, so a
broker that accepts and then drops us (an ACL denial under mosquitto 2.0) is not hammered."""

MISC_INTERVAL: Final = 1.0
"""How often paho's `loop_misc()` runs (keepalive PINGREQ and the keepalive deadline)."""

UNSUPPORTED_PROTOCOL_VERSION: Final = 0x84
"""CONNACK reason code (MQTT 5; paho maps the 3.1.1 return code 1 to it) for a protocol level the broker
does not speak."""

PROTOCOL_HINT: Final = 'set mqtt.protocol: "3.1.1" in the gateway config'
"""The fix named in the one log line written when a broker refuses MQTT 5 (`mqtt broker refused MQTT 5`)."""

_MAX_WINDOW: Final = 65_000
"""Below the 16-bit message id space, so an id is never reused while its message is outstanding."""

TRANSIENT_REASON_CODES: Final[dict[int, str]] = {
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8B: "Server shutting down",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x91: "Packet Identifier in use",
    0x93: "Receive Maximum exceeded",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}
"""MQTT 5 failure reason codes that describe a temporary condition (see the module docstring's table)."""


def is_permanent_reason_code(code: int) -> bool:
    """True when an MQTT 5 failure reason code means re-sending the same message cannot succeed."""
    return code >= 0x80 and code not in TRANSIENT_REASON_CODES


_MESSAGES: Final = Messages(
    connected="mqtt connected", lost="mqtt connection lost", cannot_connect="mqtt connect failed",
    failed="mqtt connect failed permanently; retrying at the slowest backoff rate",
    unexpected="unexpected error in the mqtt connection; treated as transient", reason_field="error",
)

_PLAIN_SCHEMES: Final = ("mqtt", "tcp")
_TLS_SCHEMES: Final = ("mqtts", "ssl")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Outcome of one message. `permanent` means re-sending the same message cannot succeed."""

    ok: bool
    permanent: bool = False
    reason: str | None = None
    reason_code: int | None = None


_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)
"""Linux only; elsewhere delayed ACKs stay as the system has them."""
_OK: Final = PublishResult(ok=True)
_NOT_CONNECTED: Final = PublishResult(ok=False, reason="not connected to a broker")


class _Secret:
    """Holds a password; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class _Broker:
    """One entry of `mqtt.url`. `display` is what logs show: scheme, host and port, never user info."""

    display: str
    host: str
    port: int
    tls: bool
    username: str | None
    password: _Secret | None

    def __repr__(self) -> str:
        return f"_Broker({self.display!r})"


def _parse_broker(url: str) -> _Broker:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    tls = scheme in _TLS_SCHEMES
    host = parts.hostname or ""
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError([f"mqtt.url: the port of {scheme}://{host} is not a number"]) from None
    shown_host = f"[{host}]" if ":" in host else host
    return _Broker(
        display=f"{scheme}://{shown_host}:{port}",
        host=host,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=_Secret(unquote(parts.password)) if parts.password else None,
    )


def _tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Verification always on; hostname checking only off by an explicit `verify_hostname: false`."""
    tls = config.tls
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
        if tls and (tls.cert_file or tls.key_file):
            if not tls.cert_file:
                raise ConfigError(["mqtt.tls.key_file is set without mqtt.tls.cert_file"])
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        what = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError([f"mqtt.tls: cannot load the CA file or client certificate/key: {what}"]) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = tls.verify_hostname if tls else True
    return context


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of why a connect failed, for logs and `last_error`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc.strerror or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def _publish_packet_size(topic: str, payload_len: int, qos: int, mqtt5: bool) -> int:
    """Bytes of a PUBLISH packet without properties, as paho writes it."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if mqtt5 else 0) + payload_len
    return 1 + _varint_len(remaining) + remaining


class _ConnectFailed(Exception):
    """A connect attempt failed; the message is safe to log (no secrets).

    `unreachable`: the TCP connect itself failed (refused, unreachable, timed out), so a port probe can
    tell when trying again is worth it.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class _ProtocolRefused(_ConnectFailed):
    """The broker refused the MQTT 5 CONNECT for its protocol version (e.g. NATS, which speaks 3.1.1 only).

    A config problem, not an outage: the gateway says once what to change and never downgrades by itself
    (MQTT 3.1.1 drops PUBACK reason codes, Receive Maximum and Maximum Packet Size, so the semantics of a
    refusal would change silently).
    """


class _Batch:
    """Results of one publish call, filled in by PUBACK callbacks or by the loss of the connection."""

    __slots__ = ("done", "outstanding", "results")

    def __init__(self, size: int) -> None:
        self.results: list[PublishResult | None] = [None] * size
        self.outstanding = 0
        self.done: asyncio.Future[None] | None = None

    def settle(self, index: int, result: PublishResult) -> None:
        self.results[index] = result
        self.outstanding -= 1
        if self.outstanding == 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)


class _Link:
    """One MQTT connection: a fresh paho client on a connected socket and the messages it waits for.

    All paho calls and callbacks happen on the event loop thread (reader/writer callbacks), so no locks.
    Once `closed` is set it never clears: a new connection is a new `_Link`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        broker: _Broker,
        config: MqttConfig,
        *,
        client_id: str,
        will: tuple[str, bytes],
        username: str | None,
        password: _Secret | None,
        on_lost: Callable[[_Link], None],
    ) -> None:
        self.loop = loop
        self._on_lost = on_lost
        self.broker = broker
        self.mqtt5 = config.protocol == "5"
        self.keepalive = max(1, round(config.keepalive))
        self.window = max(1, min(config.max_inflight, _MAX_WINDOW))
        self.max_packet: int | None = None
        self.max_qos = 2
        self.retain_available = True
        self.pending: dict[int, tuple[_Batch, int]] = {}
        self.inflight = 0
        self.last_progress = time.monotonic()
        self.closed = False
        self.close_reason = "connection closed"
        self.connack: asyncio.Future[tuple[ReasonCode, Properties | None] | None] = loop.create_future()
        self._space_waiters: list[asyncio.Future[None]] = []
        self._closed_waiters: list[asyncio.Future[None]] = []
        self._sock: Any = None

        client = _PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self.mqtt5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(0)  # unlimited in paho: the window below is the bound
        client.max_queued_messages_set(0)
        client.will_set(will[0], will[1], qos=1, retain=True)
        if username is not None or password is not None:
            client.username_pw_set(username or "", password.reveal() if password else None)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def __repr__(self) -> str:
        return f"<_Link {self.broker.display} closed={self.closed} inflight={self.inflight}>"

    @property
    def low_mark(self) -> int:
        """Waiters for window space wake when the window has drained to here (fewer wake-ups)."""
        return self.window - max(1, self.window // 8)

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self, sock: socket.socket) -> None:
        """Hand the connected socket to paho and queue CONNECT (written by the writer callback)."""
        self.client.prepared_socket = sock
        try:
            if self.mqtt5:
                rc = self.client.connect(self.broker.host, self.broker.port, self.keepalive, clean_start=True)
            else:
                rc = self.client.connect(self.broker.host, self.broker.port, self.keepalive)
        except BaseException:
            self.client.prepared_socket = None
            self.abort("connect failed")
            sock.close()
            raise
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.abort("connect failed")
            raise _ConnectFailed(f"cannot send CONNECT: {paho.error_string(rc)}")

    async def wait_connack(self) -> None:
        """Wait for CONNACK (the caller holds the deadline); raise `_ConnectFailed` on refusal or loss."""
        answer = await self.connack
        if answer is None:
            raise _ConnectFailed(f"connection closed before CONNACK ({self.close_reason})")
        reason, props = answer
        if reason.is_failure:
            if self.mqtt5 and reason.value == UNSUPPORTED_PROTOCOL_VERSION:
                raise _ProtocolRefused(f"broker refused the connection: {reason} (it does not speak MQTT 5)")
            raise _ConnectFailed(f"broker refused the connection: {reason}")
        if props is not None:
            receive_maximum = getattr(props, "ReceiveMaximum", None)
            if receive_maximum:
                self.window = max(1, min(self.window, receive_maximum))
            self.max_packet = getattr(props, "MaximumPacketSize", None)
            self.max_qos = getattr(props, "MaximumQoS", 2)
            self.retain_available = bool(getattr(props, "RetainAvailable", 1))

    def abort(self, reason: str) -> None:
        """Close the socket now (no DISCONNECT) and fail every outstanding message. Idempotent."""
        sock = self._sock
        if sock is not None:
            self._unregister(sock)
        paho_sock = self.client.socket()
        if paho_sock is not None:
            paho_sock.close()
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        failure = PublishResult(ok=False, reason=f"connection lost before acknowledgement: {reason}")
        pending, self.pending = self.pending, {}
        self.inflight = 0
        for batch, index in pending.values():
            batch.settle(index, failure)
        if not self.connack.done():
            self.connack.set_result(None)
        self._wake(self._space_waiters)
        self._wake(self._closed_waiters)
        self._on_lost(self)

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        waiters.clear()

    async def wait_closed(self, limit: float | None = None) -> bool:
        """Wait up to `limit` seconds for the link to end; True when it has."""
        if not self.closed:
            fut: asyncio.Future[None] = self.loop.create_future()
            self._closed_waiters.append(fut)
            try:
                await asyncio.wait((fut,), timeout=limit)
            finally:
                fut.cancel()
        return self.closed

    async def wait_space(self, limit: float) -> None:
        """Wait up to `limit` seconds for the window to drain to `low_mark` (or the link to end)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._space_waiters.append(fut)
        try:
            await asyncio.wait((fut,), timeout=limit)
        finally:
            fut.cancel()

    # --- publishing ---------------------------------------------------------------------------------

    def submit(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, batch: _Batch, index: int
    ) -> PublishResult | None:
        """Hand one message to paho. None: in flight (the batch is settled later); else its result."""
        if self.closed:
            return PublishResult(ok=False, reason=f"connection lost: {self.close_reason}")
        if qos > self.max_qos:
            return PublishResult(
                ok=False, permanent=True, reason=f"the broker accepts at most QoS {self.max_qos}",
                reason_code=0x9B,
            )
        if self.max_packet is not None:
            size = _publish_packet_size(topic, len(payload), qos, self.mqtt5)
            if size > self.max_packet:
                return PublishResult(
                    ok=False, permanent=True, reason_code=0x95,
                    reason=f"packet of {size} bytes exceeds the broker's maximum packet size of "
                    f"{self.max_packet} bytes",
                )
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain and self.retain_available)
        except (ValueError, TypeError) as exc:
            return PublishResult(ok=False, permanent=True, reason=f"cannot publish to {topic!r}: {exc}")
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            if self.inflight == 0:
                self.last_progress = time.monotonic()
            self.pending[info.mid] = (batch, index)
            batch.outstanding += 1
            self.inflight += 1
            return None
        if info.rc == MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE:
            return PublishResult(ok=False, permanent=True, reason="payload too large for MQTT")
        return PublishResult(ok=False, reason=f"paho refused the message: {paho.error_string(info.rc)}")

    # --- paho callbacks (event loop thread) ----------------------------------------------------------

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        entry = self.pending.pop(mid, None)
        if entry is None:
            return
        self.inflight -= 1
        self.last_progress = time.monotonic()
        batch, index = entry
        if reason.is_failure:
            permanent = is_permanent_reason_code(reason.value)
            batch.settle(index, PublishResult(
                ok=False, permanent=permanent, reason_code=reason.value,
                reason=f"broker {'rejected' if permanent else 'deferred'} the message: {reason}",
            ))
        else:
            batch.settle(index, _OK)
        if self._space_waiters and self.inflight <= self.low_mark:
            self._wake(self._space_waiters)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not self.connack.done():
            self.connack.set_result((reason, props))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        from_broker = getattr(flags, "is_disconnect_packet_from_server", False)
        self._lost(f"DISCONNECT from broker: {reason}" if from_broker else f"{reason}")

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self.loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._unregister(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self.closed:
            self.loop.add_writer(sock, self._on_writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() >= 0:
            self.loop.remove_writer(sock)

    def _unregister(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._sock = None

    def _on_readable(self) -> None:
        try:
            self.client.loop_read()
            if _QUICKACK is not None and self._sock is not None:
                # Acknowledge at once (Linux re-enables delayed ACKs after each read): a broker with Nagle on
                # (mosquitto's default, set_tcp_nodelay false) holds every PUBACK after the first until our
                # ACK arrives, so a window of QoS 1 messages took ~40 ms per round trip.
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            # Decrypted TLS bytes may wait inside the SSL object with nothing left on the fd.
            sock = self.client.socket()
            while isinstance(sock, ssl.SSLSocket) and sock.pending() and not self.closed:
                self.client.loop_read()
                sock = self.client.socket()
        except Exception as exc:  # a callback must not escape into the event loop
            self.abort(f"read failed: {_describe(exc)}")

    def _on_writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:
            self.abort(f"write failed: {_describe(exc)}")


async def _accepts(broker: _Broker, limit: float) -> bool:
    """True when the broker's port accepts a TCP connection within `limit` s (closed at once, nothing sent)."""
    with anyio.move_on_after(limit):
        try:
            sock = await _tcp_connect(broker)
        except OSError:
            return False
        sock.close()
        return True
    return False


async def _tcp_connect(broker: _Broker) -> socket.socket:
    """TCP connect to every resolved address in turn; the connected socket is non-blocking, TCP_NODELAY."""
    loop = asyncio.get_running_loop()
    infos = await anyio.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    sock: socket.socket | None = None
    for family, kind, proto, _, address in infos:
        candidate = socket.socket(family, kind, proto)
        try:
            candidate.setblocking(False)
            await loop.sock_connect(candidate, address)
        except OSError as exc:
            candidate.close()
            error = exc
            continue
        except BaseException:
            candidate.close()
            raise
        sock = candidate
        break
    if sock is None:
        raise error or OSError(f"no address for {broker.host}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _start_tls(sock: socket.socket, broker: _Broker, context: ssl.SSLContext | None) -> socket.socket:
    """The TLS handshake on a connected socket (returned as is without a context); closes it on failure."""
    if context is None:
        return sock
    try:
        tls_sock = context.wrap_socket(sock, server_hostname=broker.host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        while True:
            try:
                tls_sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await anyio.wait_readable(tls_sock)
            except ssl.SSLWantWriteError:
                await anyio.wait_writable(tls_sock)
    except BaseException:
        tls_sock.close()
        raise
    return tls_sock


def _payload(payload: bytes | Callable[[], bytes]) -> bytes:
    return payload if isinstance(payload, bytes) else payload()


class MqttPublisher:
    """Owns the MQTT connection for its whole life; `publish_batch()` resolves on PUBACK.

    Use: `await tg.start(publisher.run)`, then `await publisher.wait_connected()` and
    `await publisher.publish_batch(items, qos=1)`. Cancel `run()` to stop: it publishes the retained
    offline status and disconnects within `CLOSE_TIMEOUT`.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        status_topic: str,
        online_payload: Callable[[], bytes],
        offline_payload: bytes | Callable[[], bytes],
        stopped_payload: Callable[[], bytes] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._client_id = client_id
        self._status_topic = status_topic
        self._online_payload = online_payload
        self._offline_payload = offline_payload
        """The last will, built for each connection when it is a callable."""
        self._stopped_payload = stopped_payload
        """The offline status of a clean stop (the will when None)."""
        self._brokers = [_parse_broker(url) for url in config.urls]
        tls_flags = {b.tls for b in self._brokers}
        if len(tls_flags) > 1:
            raise ConfigError([
                "mqtt.url: mix of mqtts:// and mqtt:// brokers; a TLS link never falls back to plain TCP "
                "(hint: use mqtts:// for every broker)"
            ])
        if config.tls is not None and tls_flags == {False}:
            raise ConfigError([
                "mqtt.tls is set but mqtt.url is plain mqtt://; write mqtts://host:8883 "
                "(a TLS setting never falls back to plain TCP)"
            ])
        self._tls_context = _tls_context(config) if tls_flags == {True} else None
        secret = read_secret(config.password, config.password_file)
        self._password = _Secret(secret) if secret is not None else None
        self._link: _Link | None = None
        self._online = False
        self._epoch = 0
        self._connected_event: asyncio.Event | None = None
        self._last_error: str | None = None
        self._index = 0
        self.health = EquipmentHealth()
        """The link's supervised state (connecting, connected, retrying, failed), like equipment's."""
        self._rng = rng
        self._unreachable: set[int] = set()
        """Indexes of the brokers whose TCP connect failed in the last attempt: what the probe checks."""
        self._supervisor = Supervisor(
            config.backoff, self.health, log, stable_after=STABLE_AFTER, messages=_MESSAGES, rng=rng,
            probe=self._probe,
        )
        self._reported_failovers: set[tuple[str, str]] = set()
        self._reported_failures: set[tuple[str, str]] = set()
        self._running = False
        self._status_refusal_logged = False
        self._protocol_hint_logged = False
        self._failovers = 0
        self._last_broker: str | None = None

    def __repr__(self) -> str:
        brokers = ", ".join(b.display for b in self._brokers)
        return f"<MqttPublisher client_id={self._client_id!r} brokers=[{brokers}] connected={self.connected}>"

    __str__ = __repr__

    # --- state -----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is up and its online status was acknowledged."""
        return self._online and self._link is not None and not self._link.closed

    @property
    def connection_epoch(self) -> int:
        """Increments on every successful (re)connect."""
        return self._epoch

    @property
    def current_url(self) -> str | None:
        """The broker in use (scheme://host:port, no credentials), or None while disconnected."""
        return self._link.broker.display if self.connected and self._link else None

    @property
    def failovers(self) -> int:
        """Connections made to a different broker of `mqtt.url` than the previous connection, since start
        (exported as `emsedge_mqtt_failovers_total`)."""
        return self._failovers

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size from CONNACK (MQTT 5), None when it set none or is not connected."""
        link = self._link
        return link.max_packet if link is not None and not link.closed else None

    @property
    def last_error(self) -> str | None:
        """Why the last connect failed or the last connection ended (None after a success)."""
        return self._last_error

    def _event(self) -> asyncio.Event:
        if self._connected_event is None:
            self._connected_event = asyncio.Event()
        return self._connected_event

    async def wait_connected(self) -> None:
        """Return when connected (at once if already).

        Invariant: the event is set exactly while `connected` is true (`_serve` sets it, `_set_offline`
        replaces it, synchronously from the loss callback), so this loop never spins.
        """
        while not self.connected:
            await self._event().wait()

    # --- publishing ------------------------------------------------------------------------------------

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]:
        """Publish in order, pipelined up to the window; one result per item, in order.

        Returns once every item is settled: acknowledged, permanently refused, or failed because the
        connection ended (transient). Not connected: every item fails at once (transient).
        """
        link = self._link
        if not self.connected or link is None:
            return [_NOT_CONNECTED] * len(items)
        return await self._publish_on(link, items, qos=qos, retain=False)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> PublishResult:
        """Publish one message; returns after its PUBACK (QoS 1), PUBCOMP (QoS 2) or write (QoS 0)."""
        link = self._link
        if not self.connected or link is None:
            return _NOT_CONNECTED
        return (await self._publish_on(link, [(topic, payload)], qos=qos, retain=retain))[0]

    async def _publish_on(
        self, link: _Link, items: Sequence[tuple[str, bytes]], *, qos: int, retain: bool
    ) -> list[PublishResult]:
        batch = _Batch(len(items))
        timeout = self._config.publish_timeout
        for index, (topic, payload) in enumerate(items):
            while link.inflight >= link.window and not link.closed:
                await link.wait_space(self._remaining(link, timeout))
                self._check_progress(link, timeout)
            result = link.submit(topic, payload, qos=qos, retain=retain, batch=batch, index=index)
            if result is not None:
                batch.results[index] = result
        while batch.outstanding > 0 and not link.closed:
            batch.done = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait((batch.done,), timeout=self._remaining(link, timeout))
            finally:
                batch.done.cancel()
                batch.done = None
            self._check_progress(link, timeout)
        results = batch.results
        if any(r is None for r in results):  # pragma: no cover - guarded by the invariants above
            raise AssertionError("a message was neither acknowledged nor failed")
        return results  # type: ignore[return-value]

    @staticmethod
    def _remaining(link: _Link, timeout: float) -> float:
        return max(link.last_progress + timeout - time.monotonic(), 0.001)

    @staticmethod
    def _check_progress(link: _Link, timeout: float) -> None:
        """No PUBACK for `publish_timeout` while messages wait: the link is stuck, recycle it."""
        if link.inflight and not link.closed and time.monotonic() - link.last_progress >= timeout:
            link.abort(f"no acknowledgement within publish_timeout ({timeout:g}s)")

    # --- connection management -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, keep connected (the supervisor's backoff; failover here), and on cancellation say offline
        and disconnect."""
        if self._running:
            raise RuntimeError("MqttPublisher.run() is already running")
        self._running = True
        self._event()
        try:
            await self._supervisor.run(self._session, task_status=task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()
            self._running = False

    async def _session(self) -> None:
        """One connection: a round over the brokers until one connects, then serve it; raise why it ended.

        A round tries every broker of `mqtt.url` once, starting at the current one, with no delay between
        brokers: the supervisor's backoff lies between whole rounds (a failed round raises the last
        broker's error). When a connection ends, the next round starts at the *next* broker, so losing a
        cluster node moves the gateway to another node at the next attempt (a lone broker is retried).
        """
        link: _Link | None = None
        protocol_refusals = 0
        self._unreachable.clear()
        for attempt in range(len(self._brokers)):
            broker = self._brokers[self._index]
            try:
                link = await self._connect(broker)
                break
            except _ConnectFailed as exc:
                if exc.unreachable:
                    self._unreachable.add(self._index)
                self._last_error = f"{broker.display}: {exc}"
                if isinstance(exc, _ProtocolRefused):
                    protocol_refusals += 1
                    self._hint_protocol(broker)
                following = (self._index + 1) % len(self._brokers)
                if following != self._index:
                    self._note_failover(broker, self._brokers[following])
                    self._index = following
                if attempt == len(self._brokers) - 1:
                    # Every broker refused MQTT 5: a config problem (permanent), retried at the slowest rate.
                    refused_for_protocol = protocol_refusals == len(self._brokers)
                    raise SessionError(str(exc), transient=not refused_for_protocol,
                                       fields={"broker": broker.display}) from None
                self._note_failure(broker, str(exc))
        assert link is not None
        if self._last_broker is not None and self._last_broker != link.broker.display:
            self._failovers += 1
        self._last_broker = link.broker.display
        await self._serve(link)
        if len(self._brokers) > 1:
            self._index = (self._brokers.index(link.broker) + 1) % len(self._brokers)
        raise SessionError(link.close_reason, fields={"broker": link.broker.display})

    async def _connect(self, broker: _Broker) -> _Link:
        loop = asyncio.get_running_loop()
        username = self._config.username if self._config.username is not None else broker.username
        password = self._password if self._password is not None else broker.password
        link: _Link | None = None
        reached = False  # the TCP connect succeeded: a later failure is the broker's answer, not its absence
        try:
            with anyio.fail_after(self._config.connect_timeout):
                sock = await _tcp_connect(broker)
                reached = True
                sock = await _start_tls(sock, broker, self._tls_context)
                link = _Link(
                    loop, broker, self._config, client_id=self._client_id,
                    will=(self._status_topic, _payload(self._offline_payload)), username=username, password=password,
                    on_lost=self._link_lost,
                )
                link.start(sock)
                await link.wait_connack()
                result = (await self._publish_on(
                    link, [(self._status_topic, self._online_payload())], qos=1, retain=True
                ))[0]
        except _ConnectFailed:
            if link is not None:
                link.abort("connect failed")
            raise
        except TimeoutError:
            if link is None:
                stage = "the TCP/TLS connect"
            elif not link.connack.done():
                stage = "CONNACK"
            else:
                stage = "the PUBACK of the online status"
            if link is not None:
                link.abort("connect timed out")
            raise _ConnectFailed(
                f"timed out after {self._config.connect_timeout:g}s waiting for {stage}", unreachable=not reached
            ) from None
        except (OSError, ValueError) as exc:
            if link is not None:
                link.abort("connect failed")
            # An unresolvable name is a config or DNS fault that a port probe cannot see being fixed.
            unreachable = not reached and not isinstance(exc, socket.gaierror)
            raise _ConnectFailed(_describe(exc), unreachable=unreachable) from None
        except BaseException:
            if link is not None:
                link.abort("cancelled")
            raise
        if not result.ok and not result.permanent:
            link.abort("online status not acknowledged")
            raise _ConnectFailed(f"online status not acknowledged: {result.reason}")
        if not result.ok and not self._status_refusal_logged:
            self._status_refusal_logged = True
            log.error("mqtt online status refused by broker", broker=broker.display, reason=result.reason,
                      topic=self._status_topic)
        return link

    async def _serve(self, link: _Link) -> None:
        """Connected: run paho's keepalive housekeeping until the link ends."""
        self._link = link
        self._online = True
        self._epoch += 1
        self._last_error = None
        self._reported_failovers.clear()
        self._reported_failures.clear()
        self._event().set()
        await self._supervisor.connected(broker=link.broker.display, protocol=self._config.protocol,
                                         client_id=self._client_id, window=link.window, epoch=self._epoch)
        try:
            while not await link.wait_closed(MISC_INTERVAL):
                link.client.loop_misc()
        finally:
            if link.closed:
                self._set_offline()
                self._last_error = link.close_reason

    def _link_lost(self, link: _Link) -> None:
        """Called synchronously when a link ends, so `connected` and `wait_connected()` agree at once."""
        if link is self._link:
            self._set_offline()

    def _set_offline(self) -> None:
        if self._online:
            self._online = False
            self._connected_event = asyncio.Event()

    async def _close(self) -> None:
        """Publish the retained offline status and DISCONNECT cleanly, within CLOSE_TIMEOUT."""
        link = self._link
        was_online = self.connected
        self._set_offline()
        if link is None or link.closed or not was_online:
            if link is not None:
                link.abort("publisher stopped")
            return
        clean = False
        with anyio.move_on_after(CLOSE_TIMEOUT):
            result = (await self._publish_on(
                link, [(self._status_topic, _payload(self._stopped_payload or self._offline_payload))], qos=1,
                retain=True,
            ))[0]
            if result.ok:
                link.client.disconnect()
                clean = await link.wait_closed(CLOSE_TIMEOUT)
        link.abort("publisher stopped")
        log.info("mqtt disconnected", broker=link.broker.display, clean=clean)

    def _note_failure(self, broker: _Broker, error: str) -> None:
        """A broker failed within a round that goes on: log it once per broker and reason per outage (the
        supervisor logs the round's last failure itself)."""
        key = (broker.display, error)
        if key not in self._reported_failures:
            self._reported_failures.add(key)
            log.warning(_MESSAGES.cannot_connect, broker=broker.display, error=error)

    def _hint_protocol(self, broker: _Broker) -> None:
        """One error line for the whole run naming the fix, however many brokers and attempts refuse MQTT 5."""
        if not self._protocol_hint_logged:
            self._protocol_hint_logged = True
            log.error(
                f'mqtt broker refused MQTT 5; it speaks MQTT 3.1.1 only: {PROTOCOL_HINT}', broker=broker.display,
                hint=PROTOCOL_HINT,
            )

    async def _probe(self, error: AdapterError) -> None:
        """The supervisor's early retry: return when a broker whose TCP connect failed accepts TCP again.

        Only brokers that failed at the TCP connect itself in the last attempt are checked (all at once);
        without one it sleeps forever and the backoff decides. The next attempt starts at the broker that
        accepted. (`error` is the attempt's last one; which brokers were unreachable is kept here.)
        """
        interval = self._config.probe_interval
        candidates = sorted(self._unreachable)
        if interval is None or not candidates:
            await anyio.sleep_forever()
            return
        timeout = min(interval, self._config.connect_timeout)

        async def any_accepts() -> bool:
            accepted: list[int] = []
            async with anyio.create_task_group() as tg:

                async def check(index: int) -> None:
                    if await _accepts(self._brokers[index], timeout):
                        accepted.append(index)
                        tg.cancel_scope.cancel()

                for index in candidates:
                    tg.start_soon(check, index)
            if not accepted:
                return False
            self._index = accepted[0]
            return True

        await wait_until_reachable(any_accepts, interval, self._rng)

    def _note_failover(self, broker: _Broker, following: _Broker) -> None:
        key = (broker.display, following.display)
        if key not in self._reported_failovers:
            self._reported_failovers.add(key)
            log.warning("mqtt failing over", broker=broker.display, next_broker=following.display)
