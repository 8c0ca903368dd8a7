"""Every place emsedge relies on a library's private behaviour, in one file.

Three libraries do not offer what the gateway needs through their public API. Each hook below is as
small as possible, says why it exists and what it assumes; `tests/unit/test_compat.py` pins every
assumption, so a library upgrade that breaks one fails a unit test instead of a plant.

* paho-mqtt: `PahoClient` overrides the private `Client._create_socket` so that paho uses a socket the
  event loop already connected (and wrapped in TLS) instead of blocking in `socket.create_connection`.
* pymodbus: `fast_register_responses()` subclasses the register-read responses and replaces their
  `decode(data)` (called by pymodbus' decoder with the PDU after the function code) to keep the raw bytes
  and unpack them in one C call. Registered per client with the public `client.register()`.
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

__all__ = ["PahoClient", "fast_register_responses", "subscription_event_queue"]


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


_FAST_RESPONSES: list[type[Any]] = []


def fast_register_responses() -> list[type[Any]]:
    """Register-read responses that keep the raw bytes (`raw`) and decode them in one C call.

    pymodbus' own responses unpack every register with its own `struct.unpack` call and format the
    whole register list into a debug message (`str(pdu)`) even when debug logging is off; at 125
    registers a response that is most of the client's CPU. These subclasses are registered per client
    with pymodbus' public `client.register()` (meant for custom responses) and replace nothing globally.
    Assumes `decode(data)` gets the byte count followed by the register bytes, and that the response
    exposes `registers`, `dev_id`, `transaction_id` and `function_code`.
    """
    if _FAST_RESPONSES:
        return _FAST_RESPONSES
    from pymodbus.exceptions import ModbusIOException  # noqa: PLC0415 - keep `import emsedge` light
    from pymodbus.pdu.register_message import (  # noqa: PLC0415
        ReadHoldingRegistersResponse,
        ReadInputRegistersResponse,
    )

    def decode(self: Any, data: bytes) -> None:
        size = data[0]
        if size >= len(data) or size % 2:
            raise ModbusIOException(f"byte_count {size} > length of packet {len(data)}",
                                    function_code=self.function_code)
        self.raw = bytes(data[1 : 1 + size])
        self.registers = list(struct.unpack(f">{size // 2}H", self.raw))

    def brief(self: Any) -> str:
        return f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id}, " \
               f"registers={len(self.registers)})"

    for base in (ReadHoldingRegistersResponse, ReadInputRegistersResponse):
        _FAST_RESPONSES.append(type(f"Fast{base.__name__}", (base,), {"decode": decode, "__str__": brief}))
    return _FAST_RESPONSES


def subscription_event_queue(subscription: Any) -> asyncio.Queue[Any] | None:
    """The queue an asyncua `Subscription` (iterator mode, no handler) delivers notifications into.

    None when this asyncua has no such queue: callers then fall back to one `next_event()` at a time and
    cannot tell that the queue overflows.
    """
    queue = getattr(subscription, "_event_queue", None)
    return queue if isinstance(queue, asyncio.Queue) else None
