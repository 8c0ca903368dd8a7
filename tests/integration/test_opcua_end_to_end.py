"""`emsedge run` as a subprocess: asyncua pick-and-place server -> gateway -> real mosquitto -> subscriber."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from asyncua import ua
from opcua_server import PnPServer
from support import Mosquitto, Subscriber
from support.daemon import Daemon, gateway_config

from emsedge.schema import EventMessage, TelemetryMessage

SIGNALS = [
    # the normaliser turns machine_state readings into station_state_changed events (not telemetry)
    {"name": "machine_state", "node": "ns=2;s=PnP.State", "event": "station_state", "map": {1: 1100, 3: 5000}},
    {"name": "placed_components", "node": "ns=2;s=PnP.Counters.Placed"},
    {"name": "board_serial", "node": "ns=2;s=PnP.BoardSerial"},
    {"name": "head1_vacuum", "browse_path": "0:Objects/2:PnP/2:Heads/2:Head1/2:Vacuum", "unit": "kPa",
     "deadband": {"type": "absolute", "value": 0.5}},
]


def pnp_entry(url: str, mode: str) -> dict[str, Any]:
    return {"id": f"pnp-{mode}", "type": "pick_and_place", "adapter": "opcua", "mode": mode,
            "connection": {"url": url, "security": {"policy": "None", "mode": "None"}, "timeout": "2s"},
            "publishing_interval": "100ms", "poll_interval": "200ms",
            "backoff": {"initial": "100ms", "max": "500ms"}, "signals": SIGNALS}


async def wait_for(sub: Subscriber, predicate: Callable[[list[dict[str, Any]]], bool], suffix: str,
                   limit: float = 20.0) -> list[dict[str, Any]]:
    with anyio.fail_after(limit):
        while not predicate(got := sub.payloads(suffix)):  # noqa: ASYNC110 - the subscriber is a paho thread
            await anyio.sleep(0.05)
    return got


@pytest.mark.asyncio
async def test_both_modes_deliver_telemetry_and_state_events_to_mqtt_and_survive_a_server_restart(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber
) -> None:
    srv = PnPServer()
    await srv.start()
    config = gateway_config(tmp_path, mosquitto.url, 1,
                            equipment=[pnp_entry(srv.url, "subscribe"), pnp_entry(srv.url, "poll")])
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        for mode in ("subscribe", "poll"):
            await wait_for(subscriber, lambda ps: any(len(p["readings"]) == len(SIGNALS) - 1 for p in ps),
                           f"/pnp-{mode}/telemetry")
        await srv.tick()
        await srv.write("PnP.State", 3, ua.VariantType.Int32)
        for mode in ("subscribe", "poll"):
            await wait_for(subscriber, lambda ps: any(r["value"] == f"SN{srv.ticks:04d}"
                                                      for p in ps for r in p["readings"]), f"/pnp-{mode}/telemetry")
            await wait_for(subscriber, lambda ps: any(p["event"]["type"] == "station_state_changed" and
                                                      "5000" in str(p["event"]) for p in ps), f"/pnp-{mode}/events")
        await srv.stop()
        for mode in ("subscribe", "poll"):
            await wait_for(subscriber, lambda ps: any(p["event"]["type"] == "connection_lost" for p in ps),
                           f"/pnp-{mode}/events")
        await srv.start()
        await srv.tick()
        for mode in ("subscribe", "poll"):
            await wait_for(subscriber, lambda ps: sum(p["event"]["type"] == "connection_restored" for p in ps) >= 2,
                           f"/pnp-{mode}/events")
        srv.ticks = 70
        await srv.tick()
        await wait_for(subscriber, lambda ps: any(r["value"] == "SN0071" for p in ps for r in p["readings"]),
                       "/pnp-subscribe/telemetry")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        await srv.stop()
    telemetry = [TelemetryMessage.model_validate(p) for p in subscriber.payloads("/pnp-subscribe/telemetry")]
    assert any(r.quality == "bad" and r.status == "BadNotConnected" for m in telemetry for r in m.readings)
    vacuum = next(r for m in telemetry for r in m.readings if r.signal == "head1_vacuum")
    assert (vacuum.unit, vacuum.quality) == ("kPa", "good")
    events = [EventMessage.model_validate(p) for p in subscriber.payloads("/pnp-subscribe/events")]
    assert [e.event.type for e in events].count("connection_lost") == 1
