"""Retained machine state on `{prefix}/{equipment}/state`: a late subscriber learns every machine's current
state from a real mosquitto; a machine that goes away changes its state; one removed from the config on
reload has its retained state deleted."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import Mosquitto, Subscriber
from support.daemon import Daemon, Equipment, gateway_config, wait_until

PREFIX = "ems/plant-t/smt/line-t"


@pytest.fixture
def two_machines() -> Iterator[tuple[Equipment, Equipment]]:
    first, second = Equipment(), Equipment()
    first.start()
    second.start()
    yield first, second
    first.stop()
    second.stop()


def states(subscriber: Subscriber) -> dict[str, list[tuple[bytes, bool]]]:
    """Every message on a state topic, by equipment: (payload, retained flag)."""
    with subscriber.lock:
        items = list(subscriber.messages)
    out: dict[str, list[tuple[bytes, bool]]] = {}
    for topic, payload, retained in items:
        if topic.startswith(PREFIX + "/") and topic.endswith("/state"):
            out.setdefault(topic.split("/")[-2], []).append((payload, retained))
    return out


def latest(subscriber: Subscriber, equipment: str) -> dict[str, Any] | None:
    got = states(subscriber).get(equipment)
    if not got or got[-1][0] == b"":
        return None
    state: dict[str, Any] = json.loads(got[-1][0])
    return state


def test_late_subscriber_reads_retained_states_and_a_removed_machine_is_cleared(
    tmp_path: Path, mosquitto: Mosquitto, two_machines: tuple[Equipment, Equipment]
) -> None:
    first, second = two_machines
    path = gateway_config(tmp_path, mosquitto.url, first.port)
    config = yaml.safe_load(path.read_text())
    other = json.loads(json.dumps(config["equipment"][0]))
    other["id"] = "reflow-2"
    other["connection"]["port"] = second.port
    config["equipment"].append(other)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    daemon = Daemon(path, tmp_path / "daemon.log")
    daemon.start()
    live = Subscriber(mosquitto.port, topic=f"{PREFIX}/#")
    try:
        wait_until(lambda: all((latest(live, e) or {}).get("connection") == "connected"
                               for e in ("reflow-1", "reflow-2")), 20)

        # A subscriber that joins now gets every machine's state at once, retained.
        late = Subscriber(mosquitto.port, topic=f"{PREFIX}/+/state")
        try:
            wait_until(lambda: set(states(late)) == {"reflow-1", "reflow-2"}, 10)
            for equipment in ("reflow-1", "reflow-2"):
                payload, retained = states(late)[equipment][-1]
                assert retained
                state = json.loads(payload)
                assert state["schema"] == "emsedge/state@1"
                assert (state["gateway"], state["equipment"], state["equipment_type"]) == (
                    "test-gw", equipment, "reflow_oven")
                assert state["connection"] == "connected"
                assert state["active_faults"] == []
        finally:
            late.close()

        # The machine goes away: its state follows the supervisor (retrying), on change, still retained.
        second.stop()
        wait_until(lambda: (latest(live, "reflow-2") or {}).get("connection") == "retrying", 15)
        assert (latest(live, "reflow-1") or {}).get("connection") == "connected"

        # Removed from the config: an empty retained message deletes its state on the broker.
        config["equipment"] = config["equipment"][:1]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: states(live).get("reflow-2", [(b"x", False)])[-1][0] == b"", 15)
        later = Subscriber(mosquitto.port, topic=f"{PREFIX}/+/state")
        try:
            wait_until(lambda: "reflow-1" in states(later), 10)
            marker = Subscriber(mosquitto.port, topic=f"{PREFIX}/reflow-1/state")  # retained burst is over
            wait_until(lambda: "reflow-1" in states(marker), 10)
            marker.close()
            assert "reflow-2" not in states(later)
        finally:
            later.close()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        live.close()
