from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Mosquitto, Subscriber
from support.daemon import Equipment


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
