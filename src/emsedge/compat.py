"""Every place emsedge relies on a library's private behaviour, in one file.

Three libraries do not offer what the gateway needs through their public API. Each hook below is as
small as possible, says why it exists and what it assumes; `tests/unit/test_compat.py` pins every
assumption, so a library upgrade that breaks one fails a unit test instead of a plant.

* paho-mqtt: `PahoClient` overrides the private `Client._create_socket` so that paho uses a socket the
  event loop already connected (and wrapped in TLS) instead of blocking in `socket.create_connection`.
* pymodbus: `tolerant_responses()` subclasses the read responses (FC 1-4) and replaces their
  `decode(data)` (called by pymodbus' decoder with the PDU after the function code) to keep the raw bytes,
  unpack them in one C call and never raise; every other function code gets a response that keeps its
  bytes. Registered per client with the public `client.register()`.
* asyncua: `subscription_event_queue()` reads the private `Subscription._event_queue`, the bounded
  `asyncio.Queue` that `next_event()` consumes, to drain every queued notification in one batch and to
  see when the queue is full (notifications are then being dropped).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

__all__ = ["READ_FUNCTION_CODES", "PahoClient", "subscription_event_queue", "tolerant_responses"]


class PahoClient(paho.Client):
    """paho's client, fed with a socket that the event loop already connected (and wrapped in TLS).

    `connect()` would otherwise block the event loop in `socket.create_connection` and the TLS handshake.
    Assumes paho calls `self._create_socket()` (no arguments) from `reconnect()` to get the socket.
    """

    prepared_socket: socket.socket | None = None

    def _create_socket(self) -> SocketLike:
        sock, self.prepared_socket = self.prepared_socket, None
        if sock is None:
            raise ConnectionError("no prepared socket (paho tried to reconnect on its own)")
        return sock


_TOLERANT_RESPONSES: list[type[Any]] = []

#: The read function codes the Modbus adapter sends (coils, discrete inputs, holding, input registers).
READ_FUNCTION_CODES = (1, 2, 3, 4)


def tolerant_responses() -> list[type[Any]]:
    """Read responses (FC 1-4) that keep the raw bytes, decode in one C call and never raise.

    pymodbus' own register responses unpack every register with its own `struct.unpack` call (ours keep the
    bytes and unpack `registers` only when read: the adapter decodes `raw` in one call per lane) and format
    the whole register list into a debug message (`str(pdu)`) even when debug logging is off; at 125
    registers a response that is most of the client's CPU. And any of its responses that cannot decode
    an answer (a coil answer shorter than asked, a byte count beyond the frame) makes pymodbus drop the
    frame: the request times out and the machine goes offline. These subclasses keep whatever arrived
    (`raw`, the declared `byte_count`) for the adapter's `answer_problem` to judge. Every other function
    code gets a response that only keeps its bytes, so an answer with a function code we did not ask for
    (or one no client knows) is a `WrongFunction` block, not a timeout. They are registered per client
    with pymodbus' public `client.register()` (meant for custom responses) and replace nothing globally;
    the client only ever sends reads.
    Assumes `decode(data)` gets the PDU after the function code (byte count, then data), that pymodbus
    picks the response class by `function_code`, and that responses expose `registers`/`bits`,
    `dev_id`, `transaction_id` and `function_code`.
    """
    if _TOLERANT_RESPONSES:
        return _TOLERANT_RESPONSES
    from pymodbus.pdu import ModbusPDU  # noqa: PLC0415 - keep `import emsedge` light
    from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse  # noqa: PLC0415
    from pymodbus.pdu.register_message import (  # noqa: PLC0415
        ReadHoldingRegistersResponse,
        ReadInputRegistersResponse,
    )

    def decode_registers(self: Any, data: bytes) -> None:
        self.byte_count = data[0] if data else -1
        self.raw = bytes(data[1:])
        self._registers = None  # unpacked from `raw` only if something asks (the adapter decodes `raw`)

    def get_registers(self: Any) -> list[int]:
        if self._registers is None:
            usable = len(self.raw) // 2
            self._registers = list(struct.unpack(f">{usable}H", self.raw[: usable * 2]))
        return self._registers  # type: ignore[no-any-return]

    def set_registers(self: Any, value: Any) -> None:  # pymodbus' __init__ sets `registers`
        self._registers = list(value)

    registers = property(get_registers, set_registers)

    def decode_bits(self: Any, data: bytes) -> None:
        self.byte_count = data[0] if data else -1
        self.raw = bytes(data[1:])
        self.bits = [bool(byte >> bit & 1) for byte in self.raw for bit in range(8)]

    def brief(self: Any) -> str:
        shown = f"registers={len(self.registers)}" if self.registers else f"bytes={len(getattr(self, 'raw', b''))}"
        return f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id}, {shown})"

    for base, extra in (
        (ReadHoldingRegistersResponse, {"decode": decode_registers, "registers": registers}),
        (ReadInputRegistersResponse, {"decode": decode_registers, "registers": registers}),
        (ReadCoilsResponse, {"decode": decode_bits}),
        (ReadDiscreteInputsResponse, {"decode": decode_bits}),
    ):
        _TOLERANT_RESPONSES.append(type(f"Tolerant{base.__name__}", (base,), {**extra, "__str__": brief}))

    def keep(self: Any, data: bytes) -> None:
        self.byte_count = -1
        self.raw = bytes(data)

    for code in range(1, 0x80):
        if code not in READ_FUNCTION_CODES:
            _TOLERANT_RESPONSES.append(type(f"Unexpected{code}Response", (ModbusPDU,),
                                            {"function_code": code, "decode": keep, "__str__": brief}))
    return _TOLERANT_RESPONSES


def subscription_event_queue(subscription: Any) -> asyncio.Queue[Any] | None:
    """The queue an asyncua `Subscription` (iterator mode, no handler) delivers notifications into.

    None when this asyncua has no such queue: callers then fall back to one `next_event()` at a time and
    cannot tell that the queue overflows.
    """
    queue = getattr(subscription, "_event_queue", None)
    return queue if isinstance(queue, asyncio.Queue) else None
