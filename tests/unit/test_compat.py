"""Every private library behaviour emsedge relies on (src/emsedge/compat.py), pinned.

Each test fails when the library changes the one thing the hook assumes, so an upgrade shows up here
first and not in a plant.
"""

from __future__ import annotations

import asyncio
import inspect
import socket

import paho.mqtt.client as paho
import pytest
from asyncua import ua
from asyncua.common.subscription import OverflowPolicy, Subscription
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from emsedge.adapters.modbus.adapter import FUNCTION_CODES
from emsedge.compat import READ_FUNCTION_CODES, PahoClient, subscription_event_queue, tolerant_responses

# -------------------------------------------------------------------------------------------------
# paho-mqtt: Client._create_socket


def test_paho_still_creates_its_socket_in_the_private_method_the_publisher_overrides() -> None:
    hook = paho.Client.__dict__.get("_create_socket")
    assert callable(hook)
    assert list(inspect.signature(hook).parameters) == ["self"]
    assert "self._create_socket()" in inspect.getsource(paho.Client.reconnect)
    assert "_create_socket" in PahoClient.__dict__


def test_paho_connects_on_the_socket_it_is_handed_and_refuses_to_open_one_itself() -> None:
    client = PahoClient(paho.CallbackAPIVersion.VERSION2, client_id="compat-test")
    ours, theirs = socket.socketpair()
    try:
        client.prepared_socket = ours
        assert client.connect("127.0.0.1", 1, keepalive=5) == paho.MQTT_ERR_SUCCESS
        assert client.socket() is ours
        assert theirs.recv(1)[0] >> 4 == 1  # paho wrote CONNECT on the socket we prepared
        client.disconnect()
        with pytest.raises(ConnectionError, match="no prepared socket"):
            client.reconnect()  # paho's own reconnect must never open a blocking connection
    finally:
        ours.close()
        theirs.close()


# -------------------------------------------------------------------------------------------------
# pymodbus: register-read responses decoded from their raw bytes


def test_pymodbus_decodes_register_answers_with_the_registered_tolerant_responses() -> None:
    decoder = DecodePDU(is_server=False)
    for response in tolerant_responses():
        assert issubclass(response, ModbusPDU)
        decoder.register(response)
    for base, function_code in ((ReadHoldingRegistersResponse, 3), (ReadInputRegistersResponse, 4)):
        pdu = decoder.decode(bytes([function_code, 4, 0x12, 0x34, 0xAB, 0xCD]))
        assert isinstance(pdu, base)
        assert type(pdu).__name__ == f"Tolerant{base.__name__}"
        assert pdu.function_code == function_code
        assert pdu.raw == b"\x12\x34\xab\xcd"  # type: ignore[attr-defined]
        assert pdu.registers == [0x1234, 0xABCD]
        assert str(pdu) == f"Tolerant{base.__name__}(dev_id=0, transaction_id=0, registers=2)"
    for base, function_code in ((ReadCoilsResponse, 1), (ReadDiscreteInputsResponse, 2)):
        pdu = decoder.decode(bytes([function_code, 1, 0b101]))
        assert isinstance(pdu, base)
        assert pdu.bits[:3] == [True, False, True]


def test_pymodbus_hands_a_register_answer_shorter_than_its_byte_count_to_us_instead_of_dropping_it() -> None:
    decoder = DecodePDU(is_server=False)
    for response in tolerant_responses():
        decoder.register(response)
    pdu = decoder.decode(bytes([3, 4, 0x12, 0x34]))
    assert pdu is not None  # pymodbus' own response would raise and the frame would be dropped (a timeout)
    assert (pdu.byte_count, pdu.raw) == (4, b"\x12\x34")  # type: ignore[attr-defined]


def test_pymodbus_decodes_an_unexpected_function_code_into_a_response_that_keeps_its_bytes() -> None:
    assert tuple(FUNCTION_CODES.values()) == READ_FUNCTION_CODES
    decoder = DecodePDU(is_server=False)
    for response in tolerant_responses():
        decoder.register(response)
    pdu = decoder.decode(bytes([0x41, 1, 2, 3]))
    assert pdu is not None
    assert pdu.function_code == 0x41
    assert pdu.raw == b"\x01\x02\x03"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_modbus_client_registers_the_tolerant_responses_with_its_own_decoder_only() -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=1, retries=0, reconnect_delay=0)
    try:
        for response in tolerant_responses():
            client.register(response)
        table = client.ctx.framer.decoder.pdu_table
        assert [table[fc][1].__name__ for fc in (3, 4)] == [
            "TolerantReadHoldingRegistersResponse", "TolerantReadInputRegistersResponse"]
        assert DecodePDU.pdu_table[3][1] is ReadHoldingRegistersResponse  # nothing replaced globally
    finally:
        client.close()


# -------------------------------------------------------------------------------------------------
# asyncua: Subscription._event_queue


@pytest.mark.asyncio
async def test_asyncua_delivers_subscription_notifications_through_the_queue_the_adapter_drains() -> None:
    params = ua.CreateSubscriptionParameters()
    sub = Subscription(None, params, None, queue_maxsize=3, overflow=OverflowPolicy.DROP_OLDEST)  # type: ignore[arg-type]
    queue = subscription_event_queue(sub)
    assert isinstance(queue, asyncio.Queue)
    assert queue.maxsize == 3
    queue.put_nowait("first")
    assert await sub.next_event(timeout=0.5) == "first"  # the queue next_event() consumes
    for n in range(4):
        sub._deliver(n)  # type: ignore[arg-type] - what asyncua's publish callback calls per notification
    assert queue.full()  # the adapter reports overflow by this
    assert [queue.get_nowait() for _ in range(3)] == [1, 2, 3]  # DROP_OLDEST dropped the oldest


def test_an_asyncua_subscription_without_the_queue_is_reported_as_such() -> None:
    class Other:
        _event_queue = None

    assert subscription_event_queue(Other()) is None
