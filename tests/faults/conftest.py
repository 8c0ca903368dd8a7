from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Mosquitto, Subscriber
from support.daemon import Daemon


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that keeps the checking subscriber's session across its own restarts."""
    broker = Mosquitto(workdir=tmp_path, persistence=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def checker(durable_broker: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(durable_broker.port, topic="ems/#", client_id="fault-checker", clean=False)
    yield sub
    sub.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Every daemon a test starts; killed at the end whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()
