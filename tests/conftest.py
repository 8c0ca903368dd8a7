from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support import Mosquitto, Subscriber
from support.daemon import Equipment
from support.nats_cluster import NatsCluster
from support.nats_cluster import available as nats_available
from support.rabbitmq import RabbitMQ, available

# The default suite is deterministic: Hypothesis draws the same examples on every run (a red CI is
# reproducible, never a dice roll). `HYPOTHESIS_PROFILE=explore pytest tests/property` searches randomly
# with many more examples; a failure found that way becomes an `@example` in the test.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=2000, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir=tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()


@pytest.fixture
def equipment() -> Iterator[Equipment]:
    """A real Modbus TCP machine in its own process (tests/support/equipment_process.py)."""
    eq = Equipment()
    eq.start()
    yield eq
    eq.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One RabbitMQ node (AMQP 1.0 plugin) for the whole session: it takes 10-20 s to start."""
    if not available():
        pytest.skip("rabbitmq-server is not installed (make rabbitmq)")
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    print(f"rabbitmq started in {node.start_seconds:.1f} s")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def _nats_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if not nats_available():
        pytest.skip("nats-server is not installed (make nats-server)")
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(_nats_cluster_module: NatsCluster) -> NatsCluster:
    """A 3-node NATS JetStream cluster with MQTT 3.1.1 on every node (tests/support/nats_cluster.py).

    Started once per module (about 3 s); every test gets it with all three nodes running and ready, even
    when an earlier test stopped one.
    """
    cluster = _nats_cluster_module
    for index, node in enumerate(cluster.nodes):
        if not node.running():
            cluster.start_node(index, wait=False)
    cluster.wait_ready()
    return cluster
