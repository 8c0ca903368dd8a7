"""The CFX output survives a 20 s broker outage and a SIGKILL of the gateway: nothing lost on either output."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from support import Subscriber
from support.daemon import Daemon, Equipment, gateway_config, wait_until
from support.rabbitmq import RabbitMQ, read_queue

from emsedge.publish.cfx_mapping import unique_id

pytestmark = pytest.mark.timeout(240)

OUTAGE_SECONDS = 20.0
"""The issue's scenario: the broker is down this long while the line keeps producing."""


def test_broker_outage_and_sigkill_lose_nothing_on_either_output_and_duplicates_keep_their_unique_id(
    tmp_path: Path, mosquitto: object, subscriber: Subscriber, equipment: Equipment, rabbitmq: RabbitMQ
) -> None:
    queue = rabbitmq.declare_durable_queue(f"cfx-outage-{uuid.uuid4().hex[:8]}")
    config = gateway_config(
        tmp_path, f"mqtt://127.0.0.1:{mosquitto.port}", equipment.port,  # type: ignore[attr-defined]
        cfx={"broker": rabbitmq.url, "address": queue, "username": "guest", "password": "guest",
             "heartbeat": "300s", "publish_timeout": "5s"},
    )
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        wait_until(lambda: "cfx link up" in daemon.log(), timeout=30)
        wait_until(lambda: len(subscriber.payloads()) >= 20, timeout=30)
        rabbitmq.stop()
        time.sleep(OUTAGE_SECONDS)  # the scenario itself: the line keeps producing while the broker is down
        rabbitmq.start()
        wait_until(lambda: daemon.log().count("cfx link up") >= 2, timeout=60)
        daemon.kill()
        daemon.start()
        wait_until(lambda: daemon.log().count("cfx link up") >= 3, timeout=60)
        before = len(subscriber.payloads())
        wait_until(lambda: len(subscriber.payloads()) >= before + 20, timeout=30)
        assert daemon.stop(timeout=60) == 0
    except AssertionError:
        print(daemon.log()[-4000:])
        raise
    finally:
        daemon.kill()
    records = [p for p in subscriber.payloads() if p.get("schema") == "emsedge/telemetry@1"]
    seqs = sorted({int(p["seq"]) for p in subscriber.payloads() if "seq" in p})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "MQTT lost a seq"
    expected = {unique_id(str(p["id"]), 0) for p in records}
    envelopes = [e for e in read_queue(rabbitmq.url, queue)
                 if e["MessageName"] == "CFX.ResourcePerformance.ProcessDataRecorded"]
    got = [str(e["UniqueID"]) for e in envelopes]
    assert expected - set(got) == set(), f"{len(expected - set(got))} telemetry records never reached CFX"
    assert set(got) - expected == set(), "a CFX message with an UniqueID no record explains"
    print(f"cfx: {len(got)} messages, {len(got) - len(set(got))} duplicates (same UniqueID), "
          f"{len(expected)} records; rabbitmq restart {rabbitmq.start_seconds:.1f} s")
