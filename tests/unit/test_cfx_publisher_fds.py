"""The CFX publisher's reactor thread leaves nothing open behind it: `check-config --online` probes and
restarted outputs would otherwise leak the injector's two pipe descriptors each time."""

from __future__ import annotations

import os

from support import free_port

from emsedge.config import CfxConfig
from emsedge.publish.cfx import probe


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_probe_of_an_unreachable_broker_closes_every_descriptor_it_opened() -> None:
    config = CfxConfig(broker=f"amqp://127.0.0.1:{free_port()}", address="/exchange/amq.topic")
    probe(config, timeout=0.3)  # the first one loads proton's modules and their files
    before = _open_fds()
    for _ in range(3):
        ok, detail = probe(config, timeout=0.3)
        assert not ok and detail
    assert _open_fds() == before
