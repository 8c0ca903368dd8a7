"""The gateway on a 3-node NATS JetStream cluster speaking MQTT 3.1.1 (tests/support/nats_cluster.py)."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import Subscriber
from support.nats_cluster import NatsCluster

pytestmark = pytest.mark.timeout(120)


def publish_all(port: int, topic: str, count: int) -> None:
    """Publish `count` QoS 1 messages {"n": i} to one node and wait for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        infos = [client.publish(topic, json.dumps({"n": n}), qos=1) for n in range(count)]
        for info in infos:
            info.wait_for_publish(timeout=20)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_cluster_carries_qos1_messages_between_nodes_while_a_third_node_is_down(
    nats_cluster: NatsCluster,
) -> None:
    nats_cluster.stop_node(2)
    nats_cluster.wait_ready()
    sub = Subscriber(nats_cluster.nodes[1].mqtt_port, topic="fixture/#", client_id="fixture-sub", clean=False)
    try:
        sub.sync()  # the subscription (a JetStream consumer replicated to the two running nodes) is in place
        publish_all(nats_cluster.nodes[0].mqtt_port, "fixture/a", 100)
        got = sub.wait_for(lambda p: len([m for m in p if "n" in m]) >= 100, timeout=30)
        assert [p["n"] for p in got if "n" in p] == list(range(100))
    finally:
        sub.close()
    nats_cluster.start_node(2)
    assert nats_cluster.meta_leader() is not None
    assert all(nats_cluster.node_ready(node) for node in nats_cluster.nodes)
