"""The CFX output against a real RabbitMQ node with the AMQP 1.0 plugin, read by an independent receiver."""

from __future__ import annotations

import time

import anyio
import orjson
import pytest
from proton import Timeout
from proton.utils import BlockingConnection, BlockingReceiver
from support.rabbitmq import RabbitMQ, available

from emsedge.config import CfxConfig
from emsedge.publish.cfx import CfxPublisher

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed (make rabbitmq)"),
]

HANDLE = "plant1.line1.ict-1"


def payload(rid: str, seq: int, event: dict[str, object]) -> bytes:
    return orjson.dumps({"schema": "emsedge/event@1", "id": rid, "seq": seq, "gateway": "gw", "equipment": "ict-1",
                         "equipment_type": "ict", "ts": "2026-11-24T10:15:03.250Z", "event": event})


def drain(receiver: BlockingReceiver, connection: BlockingConnection, expected: int) -> list[object]:
    got = []
    deadline = time.monotonic() + 20
    while len(got) < expected and time.monotonic() < deadline:
        try:
            message = receiver.receive(timeout=1)
        except Timeout:
            continue
        got.append(message)
        receiver.accept()
    return got


@pytest.mark.asyncio
async def test_records_arrive_as_cfx_envelopes_with_the_sdk_properties_and_route_by_subject(
    rabbitmq: RabbitMQ,
) -> None:
    config = CfxConfig(broker=rabbitmq.url, address="/exchange/amq.topic", username="guest", password="guest")
    connection = BlockingConnection(rabbitmq.url, user="guest", password="guest", allowed_mechs="PLAIN")
    everything = connection.create_receiver("/exchange/amq.topic/plant1.#", credit=100)
    tests_only = connection.create_receiver("/exchange/amq.topic/#.CFX.Production.TestAndInspection.*", credit=100)
    publisher = CfxPublisher(config, {"ict-1": HANDLE})
    publisher._start_thread()
    try:
        with anyio.fail_after(20):
            await publisher.wait_connected()
        results = await publisher.publish_batch(
            [
                ("t", payload("r1", 1, {"type": "unit_tested", "serial": "PCB-1", "result": "pass",
                                        "test_method": "ict", "tests": [{"name": "r1", "result": "pass",
                                        "measurements": [{"name": "r1", "value": 10.0, "unit": "Ohm"}]}]})),
                ("t", payload("r2", 2, {"type": "station_state_changed", "state": 1100, "old_state": 2000})),
                ("t", payload("r3", 3, {"type": "connection_lost", "reason": "x"})),
            ],
            qos=1,
        )
        assert [r.ok for r in results] == [True, True, True]
        assert publisher.counters.accepted == 4
        all_messages = drain(everything, connection, 4)
        routed = drain(tests_only, connection, 1)
    finally:
        await publisher.close()
        connection.close()
    names = [m.properties["cfx-message"] for m in all_messages]  # type: ignore[attr-defined]
    assert names == ["CFX.Production.WorkStarted", "CFX.Production.TestAndInspection.UnitsTested",
                     "CFX.Production.WorkCompleted", "CFX.ResourcePerformance.StationStateChanged"]
    tested = all_messages[1]
    envelope = orjson.loads(bytes(tested.body))  # type: ignore[attr-defined]
    assert tested.id == envelope["UniqueID"]  # type: ignore[attr-defined]
    assert tested.subject == f"{HANDLE}.CFX.Production.TestAndInspection.UnitsTested"  # type: ignore[attr-defined]
    assert tested.content_type == 'application/json; charset="utf-8"'  # type: ignore[attr-defined]
    assert tested.durable  # type: ignore[attr-defined]
    assert tested.properties["cfx-handle"] == HANDLE  # type: ignore[attr-defined]
    assert tested.properties["cfx-topic"] == "CFX.Production.TestAndInspection"  # type: ignore[attr-defined]
    measurement = envelope["MessageBody"]["TestedUnits"][0]["Tests"][0]["Measurements"][0]
    assert measurement["$type"] == "CFX.Structures.NumericMeasurement, CFX"
    assert [m.properties["cfx-message"] for m in routed] == [  # type: ignore[attr-defined]
        "CFX.Production.TestAndInspection.UnitsTested"
    ]
