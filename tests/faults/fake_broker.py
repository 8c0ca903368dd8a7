"""A small MQTT broker that misbehaves on purpose: raw MQTT 3.1.1 / 5 packets over asyncio streams.

It speaks just enough of the protocol for a publisher: CONNECT/CONNACK (with optional MQTT 5 CONNACK
properties), PUBLISH/PUBACK, PINGREQ/PINGRESP and DISCONNECT. What it does with each data PUBLISH is
decided by `mode` (or by `policy`, a function of the publish):

  ack        PUBACK as a broker should
  withhold   never PUBACK
  double     PUBACK twice
  unknown    PUBACK a packet id that was never sent (and not the real one)
  close      close the socket after reading the PUBLISH, before any PUBACK
  reason     PUBACK with `reason_code` (MQTT 5 only, e.g. 0x87 Not authorized)
  delay      PUBACK after `delay` seconds (lets tests observe the in-flight window)

Status messages (topics ending in `/status`) are always acknowledged, so a connection comes up normally.
`answer_pings = False` simulates a stalled link that only the keepalive can notice.
Everything the broker saw is recorded for assertions: connects (with credentials), publishes, the
largest number of unacknowledged QoS 1 messages at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType

import anyio

from emsedge.config import MqttConfig
from emsedge.publish.mqtt import MqttPublisher

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14

# MQTT 3.1.1 CONNACK return codes -> MQTT 5 reason codes.
_V5_CONNACK = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}

# MQTT 5 CONNACK property identifiers used by the tests.
RECEIVE_MAXIMUM = 0x21
MAXIMUM_PACKET_SIZE = 0x27


@dataclass
class Connect:
    client_id: str
    protocol_level: int
    keepalive: int
    clean: bool
    username: str | None
    password: bytes | None
    will_topic: str | None
    will_payload: bytes | None
    will_retain: bool
    will_qos: int


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    wire_size: int = 0


@dataclass
class FakeBroker:
    mode: str = "ack"
    reason_code: int = 0x87
    delay: float = 0.2
    policy: Callable[[Publish], str] | None = None
    connack_properties: dict[int, int] = field(default_factory=dict)
    answer_pings: bool = True
    connect_return_code: int = 0
    port: int = 0
    connects: list[Connect] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    max_unacked: int = 0
    pings: int = 0
    disconnects: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def data(self) -> list[Publish]:
        return [p for p in self.publishes if not p.topic.endswith("/status")]

    def drop_connections(self) -> None:
        """Close every client connection now (as a crashing broker would)."""
        for writer in list(self._writers):
            writer.close()

    # --- protocol --------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        level = 4
        unacked: set[int] = set()
        try:
            while True:
                header, body = await _read_packet(reader)
                kind = header >> 4
                if kind == CONNECT:
                    connect = _parse_connect(body)
                    level = connect.protocol_level
                    self.connects.append(connect)
                    writer.write(self._connack(level))
                elif kind == PUBLISH:
                    publish = _parse_publish(header, body, level)
                    publish.wire_size = 1 + len(_varint(len(body))) + len(body)
                    self.publishes.append(publish)
                    if publish.qos == 0 or publish.packet_id is None:
                        continue
                    action = "ack" if publish.topic.endswith("/status") else (
                        self.policy(publish) if self.policy else self.mode
                    )
                    pid = publish.packet_id
                    if action == "close":
                        return
                    unacked.add(pid)
                    self.max_unacked = max(self.max_unacked, len(unacked))
                    if action == "ack":
                        unacked.discard(pid)
                        writer.write(_puback(pid, 0, level))
                    elif action == "double":
                        unacked.discard(pid)
                        writer.write(_puback(pid, 0, level) + _puback(pid, 0, level))
                    elif action == "unknown":
                        writer.write(_puback((pid + 30_000) % 65_535 + 1, 0, level))
                    elif action == "reason":
                        unacked.discard(pid)
                        writer.write(_puback(pid, self.reason_code, level))
                    elif action == "delay":
                        self._later(writer, pid, unacked, level)
                    elif action != "withhold":
                        raise ValueError(f"unknown fake broker mode {action!r}")
                elif kind == PINGREQ:
                    self.pings += 1
                    if self.answer_pings:
                        writer.write(bytes([PINGRESP << 4, 0]))
                elif kind == DISCONNECT:
                    self.disconnects += 1
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    def _later(self, writer: asyncio.StreamWriter, pid: int, unacked: set[int], level: int) -> None:
        def send() -> None:
            unacked.discard(pid)
            if not writer.is_closing():
                writer.write(_puback(pid, 0, level))

        asyncio.get_running_loop().call_later(self.delay, send)

    def _connack(self, level: int) -> bytes:
        if level < 5:
            return bytes([CONNACK << 4, 2, 0, self.connect_return_code])
        props = b""
        for ident, value in self.connack_properties.items():
            width = ">H" if ident == RECEIVE_MAXIMUM else ">I"
            props += bytes([ident]) + struct.pack(width, value)
        code = _V5_CONNACK.get(self.connect_return_code, 0x80)
        body = bytes([0, code]) + _varint(len(props)) + props
        return bytes([CONNACK << 4]) + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _take_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            return value, pos


def _take_str(data: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">H", data, pos)
    return data[pos + 2 : pos + 2 + length], pos + 2 + length


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, mult = 0, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            break
    return header, await reader.readexactly(length)


def _parse_connect(body: bytes) -> Connect:
    _, pos = _take_str(body, 0)  # "MQTT"
    level, flags = body[pos], body[pos + 1]
    (keepalive,) = struct.unpack_from(">H", body, pos + 2)
    pos += 4
    if level >= 5:
        length, pos = _take_varint(body, pos)
        pos += length
    client_id, pos = _take_str(body, pos)
    will_topic = will_payload = None
    if flags & 0x04:
        if level >= 5:
            length, pos = _take_varint(body, pos)
            pos += length
        topic, pos = _take_str(body, pos)
        will_payload, pos = _take_str(body, pos)
        will_topic = topic.decode()
    username = password = None
    if flags & 0x80:
        user, pos = _take_str(body, pos)
        username = user.decode()
    if flags & 0x40:
        password, pos = _take_str(body, pos)
    return Connect(
        client_id=client_id.decode(), protocol_level=level, keepalive=keepalive, clean=bool(flags & 0x02),
        username=username, password=password, will_topic=will_topic, will_payload=will_payload,
        will_retain=bool(flags & 0x20), will_qos=(flags >> 3) & 0x03,
    )


def _parse_publish(header: int, body: bytes, level: int) -> Publish:
    qos = (header >> 1) & 0x03
    topic, pos = _take_str(body, 0)
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack_from(">H", body, pos)
        pos += 2
    if level >= 5:
        length, pos = _take_varint(body, pos)
        pos += length
    return Publish(
        topic=topic.decode(), payload=body[pos:], qos=qos, retain=bool(header & 0x01), dup=bool(header & 0x08),
        packet_id=packet_id,
    )


def _puback(packet_id: int, reason: int, level: int) -> bytes:
    if level < 5 or reason == 0:
        return bytes([PUBACK << 4, 2]) + struct.pack(">H", packet_id)
    return bytes([PUBACK << 4, 3]) + struct.pack(">HB", packet_id, reason)


# --- helpers shared by the publisher tests ------------------------------------------------------------

STATUS_TOPIC = "ems/test/_gateway/status"


def make_publisher(url: str | list[str], **mqtt: object) -> MqttPublisher:
    """A publisher with fast test timings; `mqtt` overrides MqttConfig fields."""
    settings: dict[str, object] = {
        "url": url, "publish_timeout": 1.0, "connect_timeout": 2.0, "backoff": {"initial": 0.05, "max": 0.2},
    }
    settings.update(mqtt)
    return MqttPublisher(
        MqttConfig.model_validate(settings),
        client_id="test-gateway",
        status_topic=STATUS_TOPIC,
        online_payload=lambda: b'{"state":"online"}',
        offline_payload=b'{"state":"offline"}',
    )


@contextlib.asynccontextmanager
async def running(publisher: MqttPublisher, *, connected: bool = True) -> AsyncIterator[MqttPublisher]:
    """Run the publisher in a task group for the block; optionally wait (15 s at most) until connected."""
    async with anyio.create_task_group() as tg:
        await tg.start(publisher.run)
        if connected:
            with anyio.fail_after(15):
                await publisher.wait_connected()
        try:
            yield publisher
        finally:
            tg.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], object], limit: float = 15.0) -> None:
    """Poll a plain condition (publisher state, broker records) until true; fail after `limit` seconds."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - the conditions are plain attributes, not events
            await anyio.sleep(0.01)
