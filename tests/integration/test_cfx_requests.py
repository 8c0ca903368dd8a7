"""The CFX request listener against a real RabbitMQ: requests sent by an independent AMQP 1.0 client."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import anyio
import orjson
import pytest
from proton import Message
from proton.utils import BlockingConnection
from support.rabbitmq import RabbitMQ, available

from emsedge.config import CfxConfig
from emsedge.publish.cfx_requests import CfxRequestListener

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed (make rabbitmq)"),
]

HANDLES = {"aoi-1": "plant1.line1.aoi-1", "ict-1": "plant1.line1.ict-1"}
REQUESTER = "mes.requester-1"


def request(name: str, body: dict[str, Any], *, target: str) -> dict[str, Any]:
    return {"MessageName": name, "Version": "2.1", "TimeStamp": "2026-11-24T10:15:03.250+00:00",
            "UniqueID": str(uuid.uuid4()), "Source": REQUESTER, "Target": target,
            "RequestID": f"REQUEST-{uuid.uuid4()}", "MessageBody": body}


class Requester:
    """A plain proton BlockingConnection: sends requests to a handle's address, reads its own reply queue."""

    def __init__(self, url: str) -> None:
        self.connection = BlockingConnection(url, user="guest", password="guest", allowed_mechs="PLAIN")
        self.reply_to = f"/queue/replies-{uuid.uuid4().hex[:8]}"
        self.replies = self.connection.create_receiver(self.reply_to, credit=50)
        self.senders: dict[str, Any] = {}

    def ask(self, address: str, envelope: dict[str, Any], *, reply_to: str | None = None,
            body: bytes | None = None) -> None:
        sender = self.senders.get(address)
        if sender is None:
            sender = self.senders[address] = self.connection.create_sender(address)
        message = Message(body=body if body is not None else orjson.dumps(envelope),
                          reply_to=reply_to or self.reply_to, id=str(uuid.uuid4()),
                          content_type='application/json; charset="utf-8"')
        message.inferred = True
        sender.send(message, timeout=10)

    def receive(self, timeout: float = 15.0) -> tuple[Any, dict[str, Any]]:
        message = self.replies.receive(timeout=timeout)
        self.replies.accept()
        return message, orjson.loads(bytes(message.body))

    def close(self) -> None:
        self.connection.close()


def config(rabbitmq: RabbitMQ, prefix: str) -> CfxConfig:
    return CfxConfig.model_validate({
        "broker": rabbitmq.url, "address": "/exchange/amq.topic", "username": "guest", "password": "guest",
        "connect_timeout": "10s", "backoff": {"initial": "200ms", "max": "1s"},
        "requests": {"address": f"/queue/{prefix}-{{handle}}"},
    })


async def wait_for(predicate: Any, deadline: float = 20.0) -> None:
    with anyio.fail_after(deadline):
        while not predicate():  # noqa: ASYNC110 - the listener's state is set by its reactor thread
            await anyio.sleep(0.05)


@pytest.mark.asyncio
async def test_each_handle_answers_are_you_there_who_is_there_endpoint_information_and_not_supported(
    rabbitmq: RabbitMQ,
) -> None:
    prefix = f"req-{uuid.uuid4().hex[:6]}"
    listener = CfxRequestListener(config(rabbitmq, prefix), HANDLES)
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        await wait_for(lambda: listener.connected)
        requester = await anyio.to_thread.run_sync(Requester, rabbitmq.url)
        try:
            asked = [
                ("plant1.line1.aoi-1", request("CFX.AreYouThereRequest", {"CFXHandle": "plant1.line1.aoi-1"},
                                               target="plant1.line1.aoi-1")),
                ("plant1.line1.ict-1", request("CFX.WhoIsThereRequest", {"SupportedTopicQueryType": "Any",
                                               "SupportedTopics": [{"TopicName": "CFX.Production.TestAndInspection",
                                                                    "TopicSupportType": "Consumer",
                                                                    "SupportedMessages": []}]},
                                               target="plant1.line1.ict-1")),
                ("plant1.line1.ict-1", request("CFX.GetEndpointInformationRequest",
                                               {"CFXHandle": "plant1.line1.ict-1"}, target="plant1.line1.ict-1")),
                ("plant1.line1.aoi-1", request("CFX.Production.GetActiveRecipeRequest", {},
                                               target="plant1.line1.aoi-1")),
            ]
            replies = []
            for handle, envelope in asked:
                await anyio.to_thread.run_sync(lambda h=handle, e=envelope: requester.ask(f"/queue/{prefix}-{h}", e))
                replies.append(await anyio.to_thread.run_sync(requester.receive))
        finally:
            await anyio.to_thread.run_sync(requester.close)
            tg.cancel_scope.cancel()

    for (handle, asked_envelope), (message, response) in zip(asked, replies, strict=True):
        assert list(response) == ["MessageName", "Version", "TimeStamp", "UniqueID", "Source", "Target",
                                  "RequestID", "MessageBody"]
        assert response["RequestID"] == asked_envelope["RequestID"]
        assert message.correlation_id == asked_envelope["RequestID"]
        assert message.id == response["UniqueID"]
        assert response["Source"] == handle and response["Target"] == REQUESTER
        assert response["Version"] == "2.1"
        assert message.subject == f"{handle}.{response['MessageName']}"
    assert not [t for t in threading.enumerate() if t.name == "emsedge-cfx-requests"], "reactor thread left"
    names = [r["MessageName"] for _, r in replies]
    assert names == ["CFX.AreYouThereResponse", "CFX.WhoIsThereResponse", "CFX.GetEndpointInformationResponse",
                     "CFX.NotSupportedResponse"]
    address = f"/queue/{prefix}-plant1.line1.aoi-1"
    broker = rabbitmq.url
    assert replies[0][1]["MessageBody"] == {
        "Result": {"Result": "Success", "ResultCode": 0, "Message": None},
        "CFXHandle": "plant1.line1.aoi-1", "RequestNetworkUri": broker, "RequestTargetAddress": address,
    }
    assert replies[1][1]["MessageBody"]["CFXHandle"] == "plant1.line1.ict-1"
    assert replies[1][1]["MessageBody"]["RequestTargetAddress"] == f"/queue/{prefix}-plant1.line1.ict-1"
    info = replies[2][1]["MessageBody"]
    assert info["Result"]["Result"] == "Success"
    endpoint = info["EndpointInformation"]
    assert endpoint["CFXHandle"] == "plant1.line1.ict-1" and endpoint["CFXVersion"] == "2.1"
    assert endpoint["RequestNetworkUri"] == broker
    assert endpoint["FriendlyName"] == "ict-1"
    topics = {t["TopicName"]: t for t in endpoint["SupportedTopics"]}
    assert "CFX.Production.TestAndInspection.UnitsTested" in topics["CFX.Production.TestAndInspection"][
        "SupportedMessages"]
    assert topics["CFX"]["TopicSupportType"] == "PublisherConsumer"
    assert replies[3][1]["MessageBody"] == {
        "RequestResult": {"Result": "Failed", "ResultCode": 0, "Message": "Not implemented message"}
    }
    assert listener.counters.answered == 4 and listener.counters.not_supported == 1


@pytest.mark.asyncio
async def test_listener_comes_back_after_the_broker_drops_it_and_rejects_what_is_not_a_cfx_envelope(
    rabbitmq: RabbitMQ,
) -> None:
    prefix = f"req-{uuid.uuid4().hex[:6]}"
    handle = "plant1.line1.aoi-1"
    listener = CfxRequestListener(config(rabbitmq, prefix), {"aoi-1": handle})
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        await wait_for(lambda: listener.connected)
        await anyio.to_thread.run_sync(rabbitmq.ctl, "close_all_connections", "test: broker drops the gateway")
        await wait_for(lambda: listener.health.reconnects >= 1 and listener.connected)
        requester = await anyio.to_thread.run_sync(Requester, rabbitmq.url)
        try:
            garbage = request("x", {}, target=handle)
            await anyio.to_thread.run_sync(
                lambda: requester.ask(f"/queue/{prefix}-{handle}", garbage, body=b"not json"))
            await wait_for(lambda: listener.counters.rejected == 1)
            ping = request("CFX.AreYouThereRequest", {"CFXHandle": handle}, target=handle)
            await anyio.to_thread.run_sync(lambda: requester.ask(f"/queue/{prefix}-{handle}", ping))
            message, response = await anyio.to_thread.run_sync(requester.receive)
        finally:
            await anyio.to_thread.run_sync(requester.close)
            tg.cancel_scope.cancel()
    assert not [t for t in threading.enumerate() if t.name == "emsedge-cfx-requests"], "reactor thread left"
    assert response["MessageName"] == "CFX.AreYouThereResponse"
    assert response["RequestID"] == ping["RequestID"] == message.correlation_id
    assert listener.counters.received == 2


@pytest.mark.asyncio
async def test_a_request_without_a_reply_address_is_answered_on_the_cfx_exchange_for_the_requester(
    rabbitmq: RabbitMQ,
) -> None:
    prefix = f"req-{uuid.uuid4().hex[:6]}"
    handle = "plant1.line1.ict-1"
    listener = CfxRequestListener(config(rabbitmq, prefix), {"ict-1": handle})
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        await wait_for(lambda: listener.connected)
        requester = await anyio.to_thread.run_sync(Requester, rabbitmq.url)
        try:
            watch = await anyio.to_thread.run_sync(
                lambda: requester.connection.create_receiver(f"/exchange/amq.topic/{handle}.CFX.#", credit=10))
            ping = request("CFX.AreYouThereRequest", {"CFXHandle": handle}, target=handle)
            # the SDK's default reply-to is the requester's handle, which is no address
            await anyio.to_thread.run_sync(lambda: requester.ask(f"/queue/{prefix}-{handle}", ping,
                                                                 reply_to=REQUESTER))
            message = await anyio.to_thread.run_sync(lambda: watch.receive(timeout=15))
        finally:
            await anyio.to_thread.run_sync(requester.close)
            tg.cancel_scope.cancel()
    response = orjson.loads(bytes(message.body))
    assert message.subject == f"{handle}.CFX.AreYouThereResponse"
    assert response["Target"] == REQUESTER and response["RequestID"] == ping["RequestID"]


@pytest.mark.asyncio
async def test_a_reply_address_the_broker_refuses_settles_the_request_and_the_listener_keeps_answering(
    rabbitmq: RabbitMQ,
) -> None:
    prefix = f"req-{uuid.uuid4().hex[:6]}"
    handle = "plant1.line1.aoi-1"
    listener = CfxRequestListener(config(rabbitmq, prefix), {"aoi-1": handle})
    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        await wait_for(lambda: listener.connected)
        requester = await anyio.to_thread.run_sync(Requester, rabbitmq.url)
        try:
            lost = request("CFX.AreYouThereRequest", {"CFXHandle": handle}, target=handle)
            await anyio.to_thread.run_sync(lambda: requester.ask(
                f"/queue/{prefix}-{handle}", lost, reply_to=f"/exchange/missing-{uuid.uuid4().hex[:6]}"))
            await wait_for(lambda: listener.counters.reply_failed == 1)
            ping = request("CFX.AreYouThereRequest", {"CFXHandle": handle}, target=handle)
            await anyio.to_thread.run_sync(lambda: requester.ask(f"/queue/{prefix}-{handle}", ping))
            message, response = await anyio.to_thread.run_sync(requester.receive)
        finally:
            await anyio.to_thread.run_sync(requester.close)
            tg.cancel_scope.cancel()
    assert response["RequestID"] == ping["RequestID"] == message.correlation_id
    assert listener.health.reconnects == 0  # the refused reply address did not cost the request link
    assert (listener.counters.received, listener.counters.answered) == (2, 1)
