"""The direct CFX request listener (`cfx.listen`): a plain proton client connects to it point to point, the
way the CFX SDK's `AmqpCFXEndpoint.ExecuteRequest` does (no broker involved)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from proton import Message
from proton.reactor import LinkOption
from proton.utils import BlockingConnection, LinkDetached, SendException
from support import Mosquitto, free_port
from support.daemon import Daemon, Equipment, gateway_config, wait_until
from support.rabbitmq import RabbitMQ
from support.rabbitmq import available as rabbitmq_available

from emsedge.config import CfxConfig
from emsedge.publish.cfx_listen import THREAD_NAME, CfxDirectListener

pytestmark = pytest.mark.timeout(60)

HANDLES = {"aoi-1": "plant1.line1.aoi-1", "ict-1": "plant1.line1.ict-1"}
REQUESTER = "mes.requester-1"


def request(name: str, body: dict[str, Any], *, target: str) -> dict[str, Any]:
    return {"MessageName": name, "Version": "2.1", "TimeStamp": "2026-11-24T10:15:03.250+00:00",
            "UniqueID": str(uuid.uuid4()), "Source": REQUESTER, "Target": target,
            "RequestID": f"REQUEST-{uuid.uuid4()}", "MessageBody": body}


def config(port: int) -> CfxConfig:
    # The broker is never contacted: only the listener runs here.
    return CfxConfig.model_validate({
        "broker": "amqp://127.0.0.1:1", "listen": f"127.0.0.1:{port}",
        "backoff": {"initial": "100ms", "max": "300ms"},
    })


class _ReplyTarget(LinkOption):  # type: ignore[misc]  # proton ships no type hints
    """The receiver's target address: where the SDK's requester wants its responses (`senderTarget`)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def apply(self, link: Any) -> None:
        link.target.address = self.address


class SdkRequester:
    """What `AmqpCFXEndpoint.ExecuteRequestAsync` does, with python-qpid-proton: one connection, a receiver
    with source = the handle and target = a fresh reply address, a sender to the handle, the request with
    message-id "command-request" and reply_to = that reply address."""

    def __init__(self, port: int) -> None:
        self.connection = BlockingConnection(f"amqp://127.0.0.1:{port}", timeout=10)

    def execute(self, handle: str, envelope: dict[str, Any] | None, *, body: bytes | None = None,
                dynamic: bool = False) -> tuple[Any, dict[str, Any]]:
        if dynamic:
            receiver = self.connection.create_receiver(None, dynamic=True, credit=10)
            reply_to = receiver.link.remote_source.address
        else:
            reply_to = f"{REQUESTER}-{uuid.uuid4()}"
            receiver = self.connection.create_receiver(handle, credit=10, options=_ReplyTarget(reply_to))
        sender = self.connection.create_sender(handle)
        try:
            message = Message(body=body if body is not None else orjson.dumps(envelope), id="command-request",
                              reply_to=reply_to, content_type='application/json; charset="utf-8"')
            message.inferred = True
            sender.send(message, timeout=10)
            response = receiver.receive(timeout=10)
            receiver.accept()
            return response, orjson.loads(bytes(response.body))
        finally:
            sender.close()
            receiver.close()

    def close(self) -> None:
        self.connection.close()


async def wait_for(predicate: Any, deadline: float = 20.0) -> None:
    with anyio.fail_after(deadline):
        while not predicate():  # noqa: ASYNC110 - the listener's state is set by its reactor thread
            await anyio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_requester_connecting_directly_gets_answers_for_each_handle_and_not_supported() -> None:
    port = free_port()
    listener = CfxDirectListener(config(port), HANDLES)
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        await wait_for(lambda: listener.listening)
        requester = await anyio.to_thread.run_sync(SdkRequester, port)
        try:
            asked = [
                ("plant1.line1.aoi-1", request("CFX.AreYouThereRequest", {"CFXHandle": "plant1.line1.aoi-1"},
                                               target="plant1.line1.aoi-1"), False),
                ("plant1.line1.ict-1", request("CFX.WhoIsThereRequest", {"SupportedTopicQueryType": "Ignore"},
                                               target="plant1.line1.ict-1"), True),
                ("plant1.line1.ict-1", request("CFX.GetEndpointInformationRequest",
                                               {"CFXHandle": "plant1.line1.ict-1"}, target="plant1.line1.ict-1"),
                 False),
                ("plant1.line1.aoi-1", request("CFX.Production.GetActiveRecipeRequest", {},
                                               target="plant1.line1.aoi-1"), False),
                ("plant1.line1.aoi-1", request("Vendor.Frobnicate", {}, target="plant1.line1.aoi-1"), True),
            ]
            replies = []
            for handle, envelope, dynamic in asked:
                replies.append(await anyio.to_thread.run_sync(
                    lambda h=handle, e=envelope, d=dynamic: requester.execute(h, e, dynamic=d)))
            snapshot = listener.snapshot()
        finally:
            await anyio.to_thread.run_sync(requester.close)
            tg.cancel_scope.cancel()

    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME], "reactor thread left"
    for (handle, asked_envelope, _), (message, response) in zip(asked, replies, strict=True):
        assert response["RequestID"] == asked_envelope["RequestID"]
        assert message.correlation_id == asked_envelope["RequestID"]
        assert message.id == response["UniqueID"]
        assert response["Source"] == handle and response["Target"] == REQUESTER
        assert message.subject == f"{handle}.{response['MessageName']}"
    assert [r["MessageName"] for _, r in replies] == [
        "CFX.AreYouThereResponse", "CFX.WhoIsThereResponse", "CFX.GetEndpointInformationResponse",
        "CFX.NotSupportedResponse", "CFX.NotSupportedResponse"]
    uri = f"amqp://127.0.0.1:{port}"
    assert replies[0][1]["MessageBody"] == {
        "Result": {"Result": "Success", "ResultCode": 0, "Message": None},
        "CFXHandle": "plant1.line1.aoi-1", "RequestNetworkUri": uri, "RequestTargetAddress": "plant1.line1.aoi-1",
    }
    assert replies[1][1]["MessageBody"]["CFXHandle"] == "plant1.line1.ict-1"
    endpoint = replies[2][1]["MessageBody"]["EndpointInformation"]
    assert endpoint["CFXHandle"] == "plant1.line1.ict-1" and endpoint["FriendlyName"] == "ict-1"
    assert endpoint["RequestNetworkUri"] == uri and endpoint["RequestTargetAddress"] == "plant1.line1.ict-1"
    assert replies[3][1]["MessageBody"]["RequestResult"]["Message"] == "Not implemented message"
    assert replies[4][1]["MessageBody"]["RequestResult"]["Message"] == "Unknown message"
    assert snapshot["listening"] is True and snapshot["address"] == f"127.0.0.1:{port}"
    assert snapshot["request_uri"] == uri and snapshot["open_connections"] == 1
    assert snapshot["counters"] | {"connections": 1} == {
        "received": 5, "answered": 5, "not_supported": 2, "not_answered": 0, "rejected": 0, "reply_failed": 0,
        "connections": 1, "refused_links": 0,
    }


@pytest.mark.asyncio
async def test_unknown_handle_garbage_and_a_missing_reply_link_are_refused_and_the_listener_keeps_answering(
) -> None:
    port = free_port()
    listener = CfxDirectListener(config(port), HANDLES)
    handle = "plant1.line1.aoi-1"

    def misbehave() -> list[str]:
        seen = []
        connection = BlockingConnection(f"amqp://127.0.0.1:{port}", timeout=10)
        try:
            def attach_and_send() -> None:
                connection.create_sender("plant1.line1.nobody").send(Message(body=b"{}"), timeout=5)

            with pytest.raises(LinkDetached) as refused:  # a handle this gateway does not speak for
                attach_and_send()
            seen.append(str(refused.value))
            anonymous = connection.create_sender(None)
            envelope = request("CFX.AreYouThereRequest", {}, target="plant1.line1.nobody")
            with pytest.raises(SendException):  # the same through an anonymous link, addressed by `to`
                anonymous.send(Message(address="plant1.line1.nobody", body=orjson.dumps(envelope)), timeout=5)
            sender = connection.create_sender(handle)
            garbage = Message(body=b"\x00not json", reply_to="whatever")
            garbage.inferred = True
            with pytest.raises(SendException):
                sender.send(garbage, timeout=5)
            with pytest.raises(SendException):  # a reply_to without a receiver link on this connection
                sender.send(Message(body=orjson.dumps(request("CFX.AreYouThereRequest", {}, target=handle)),
                                    reply_to="nowhere"), timeout=5)
        finally:
            connection.close()
        return seen

    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        await wait_for(lambda: listener.listening)
        seen = await anyio.to_thread.run_sync(misbehave)
        requester = await anyio.to_thread.run_sync(SdkRequester, port)
        try:
            _, response = await anyio.to_thread.run_sync(
                lambda: requester.execute(handle, request("CFX.AreYouThereRequest", {}, target=handle)))
        finally:
            await anyio.to_thread.run_sync(requester.close)
        snapshot = listener.snapshot()
        tg.cancel_scope.cancel()

    assert "amqp:not-found" in seen[0]
    assert response["MessageName"] == "CFX.AreYouThereResponse"
    assert snapshot["listening"] is True
    assert snapshot["counters"] == {
        "received": 4, "answered": 1, "not_supported": 0, "not_answered": 0, "rejected": 2, "reply_failed": 1,
        "connections": 2, "refused_links": 1,
    }


@pytest.mark.asyncio
async def test_a_port_in_use_is_a_clear_error_and_the_listener_binds_once_it_is_free() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    listener = CfxDirectListener(config(port), HANDLES)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(listener.run)
            await wait_for(lambda: listener.health.last_error is not None)
            error = listener.health.last_error
            assert not listener.listening
            blocker.close()
            await wait_for(lambda: listener.listening)
            tg.cancel_scope.cancel()
    finally:
        blocker.close()
    assert error is not None and f"cannot listen on 127.0.0.1:{port}" in error, error
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME], "reactor thread left"
    again = socket.socket()  # the session closed its listening socket when it stopped
    try:
        again.bind(("127.0.0.1", port))
    finally:
        again.close()


@pytest.mark.skipif(not rabbitmq_available(), reason="rabbitmq-server is not installed (make rabbitmq)")
@pytest.mark.timeout(120)
def test_the_daemon_announces_its_listener_answers_on_it_and_shows_it_in_healthz(
    tmp_path: Path, mosquitto: Mosquitto, equipment: Equipment, rabbitmq: RabbitMQ
) -> None:
    queue = rabbitmq.declare_durable_queue(f"cfx-listen-{uuid.uuid4().hex[:8]}")
    http_port, port = free_port(), free_port()
    handle = "plant-t.line-t.reflow-1"
    config = gateway_config(
        tmp_path, f"mqtt://127.0.0.1:{mosquitto.port}", equipment.port,
        http={"listen": f"127.0.0.1:{http_port}"},
        cfx={"broker": rabbitmq.url, "address": queue, "username": "guest", "password": "guest",
             "listen": f"127.0.0.1:{port}"},
    )
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        wait_until(lambda: "cfx link up" in daemon.log() and "cfx listen: answering requests" in daemon.log(),
                   timeout=30)
        asked = request("CFX.AreYouThereRequest", {"CFXHandle": handle}, target=handle)
        requester = SdkRequester(port)
        try:
            message, answer = requester.execute(handle, asked)
        finally:
            requester.close()
        wait_until(lambda: health(http_port).get("cfx", {}).get("listen", {}).get("counters", {})
                   .get("answered", 0) >= 1, timeout=15)
        listen_health = health(http_port)["cfx"]["listen"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as response:
            metrics = response.read().decode()
        assert daemon.stop(timeout=30) == 0
    except AssertionError:
        print(daemon.log()[-4000:])
        raise
    finally:
        daemon.kill()
    uri = f"amqp://127.0.0.1:{port}"
    assert answer["MessageName"] == "CFX.AreYouThereResponse" and message.correlation_id == asked["RequestID"]
    assert answer["MessageBody"]["RequestNetworkUri"] == uri
    assert listen_health["listening"] is True and listen_health["request_uri"] == uri
    assert listen_health["counters"]["received"] == 1
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in text_string_to_metric_families(metrics) for m in family.samples}
    assert samples[("emsedge_cfx_requests_total", (("outcome", "answered"), ("transport", "direct")))] == 1
    assert samples[("emsedge_cfx_request_listener_up", (("transport", "direct"),))] == 1
    connection = BlockingConnection(rabbitmq.url, user="guest", password="guest", allowed_mechs="PLAIN")
    try:
        first = connection.create_receiver(queue, credit=1).receive(timeout=10)
    finally:
        connection.close()
    connected = orjson.loads(bytes(first.body))
    assert connected["MessageName"] == "CFX.EndpointConnected"
    assert connected["MessageBody"] == {"CFXHandle": handle, "RequestNetworkUri": uri,
                                        "RequestTargetAddress": handle}


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:  # 503 while degraded: the body is the same document
        return dict(json.loads(exc.read()))
    except OSError:
        return {}
