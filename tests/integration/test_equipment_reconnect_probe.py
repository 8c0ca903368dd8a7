"""After a machine outage long enough to grow the reconnect backoff, the gateway polls the machine again
within seconds of its port accepting (issue 17 part 2): a real Modbus TCP machine in its own process,
killed and started again on the same port, the real Modbus adapter under the supervisor in this process.

The jitter is pinned at its top (`rng=lambda: 1.0`), so the backoff is exact (1, 2, 4, 8 s after the
connection is lost) and the probe checks are at their slowest (1.5 x `probe_interval`). The machine comes
back right after the third refused connect, when the next attempt is 8 s away: waiting it out would miss
the target. With `probe_interval: null` this test fails (the first telemetry follows about 7 s after).

Also here: which connect failures are `unreachable` (the probe's cue) for each TCP adapter, on real sockets.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any, Self

import anyio
import pytest
from hsms_support import aoi_config
from support import free_port
from support.daemon import Equipment

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.hsms.gem import HsmsAdapter
from emsedge.adapters.modbus.adapter import ModbusAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.adapters.opcua.adapter import OpcUaPoller
from emsedge.adapters.opcua.config import OpcUaEquipment
from emsedge.adapters.spec import HasEndpoint
from emsedge.errors import AdapterError
from emsedge.schema import Record
from emsedge.supervisor import supervise_adapter

pytestmark = pytest.mark.timeout(60)

TARGET = 3.0
"""Seconds from the machine's port accepting again to the first good telemetry record (issue 17 part 2)."""


def modbus_equipment(port: int, **overrides: Any) -> ModbusEquipment:
    return ModbusEquipment.model_validate({
        "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "127.0.0.1", "port": port, "timeout": "500ms"},
        "poll_interval": "100ms", "backoff": {"initial": "1s", "max": "8s"}, "probe_interval": "1s",
        "signals": [{"name": "zone1_top_temp", "table": "holding", "address": 0, "type": "float32"}],
        **overrides,
    })


class CountingModbus(ModbusAdapter):
    """The real Modbus adapter, counting the connects its port refused (the supervisor's schedule)."""

    refused = 0

    async def __aenter__(self) -> Self:
        try:
            return await super().__aenter__()
        except AdapterError:
            self.refused += 1
            raise


def good(records: Sequence[Record]) -> bool:
    return any(r.kind == "telemetry" and r.body["readings"][0]["quality"] == "good" for r in records)


@pytest.mark.asyncio
async def test_the_first_telemetry_after_a_long_machine_outage_follows_its_port_accepting_within_3s() -> None:
    machine = Equipment()
    machine.start()
    good_at: list[float] = []

    async def emit(records: Sequence[Record]) -> None:
        if good(records):
            good_at.append(time.monotonic())

    ctx = AdapterContext(modbus_equipment(machine.port), emit)
    adapter = CountingModbus(ctx)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: supervise_adapter(adapter, ctx, rng=lambda: 1.0,
                                                                 task_status=task_status))
            with anyio.fail_after(10):
                while not good_at:  # noqa: ASYNC110 - the adapter's plain state
                    await anyio.sleep(0.02)

            await anyio.to_thread.run_sync(machine.stop)
            with anyio.fail_after(20):  # refused after 1, 2 and 4 s: the next attempt is 8 s away
                while adapter.refused < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            seen_before = len(good_at)

            starting = time.monotonic()
            await anyio.to_thread.run_sync(machine.start)  # returns once the port accepts (checked every 20 ms)
            accepting_from = time.monotonic()
            with anyio.fail_after(15):
                while len(good_at) == seen_before:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            first_after = good_at[seen_before] - accepting_from
            tg.cancel_scope.cancel()
        print(f"first telemetry {first_after:.2f}s after the port accepted "
              f"({good_at[seen_before] - starting:.2f}s after the machine process started)")
        assert adapter.refused == 3, "the machine came back while the 8 s delay ran"
        assert first_after <= TARGET, f"first telemetry {first_after:.2f}s after the machine was back"
    finally:
        machine.stop()


# --- what counts as unreachable: only a failed TCP connect ---


def closed_port() -> int:
    return free_port()  # nothing listens there


class Silent:
    """A TCP listener that accepts and says nothing: the port is open, the protocol never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


async def noop(records: Sequence[Record]) -> None:
    return None


def opcua_equipment(port: int) -> OpcUaEquipment:
    return OpcUaEquipment.model_validate({
        "id": "pnp-1", "type": "pick_and_place", "adapter": "opcua", "mode": "poll",
        "connection": {"url": f"opc.tcp://127.0.0.1:{port}/pnp", "security": {"policy": "None", "mode": "None"},
                       "timeout": "300ms"},
        "signals": [{"name": "speed", "node": "ns=2;s=speed"}],
    })


@pytest.mark.asyncio
async def test_a_refused_modbus_connect_is_unreachable() -> None:
    adapter = ModbusAdapter(AdapterContext(modbus_equipment(closed_port()), noop))
    assert isinstance(adapter, HasEndpoint) and adapter.endpoint()[0] == "127.0.0.1"
    with pytest.raises(AdapterError) as info:
        async with adapter:
            pass
    assert info.value.unreachable and info.value.transient


@pytest.mark.asyncio
async def test_a_refused_opcua_connect_is_unreachable_and_a_silent_server_is_not() -> None:
    port = closed_port()
    adapter = OpcUaPoller(AdapterContext(opcua_equipment(port), noop))
    assert adapter.endpoint() == ("127.0.0.1", port)
    with pytest.raises(AdapterError) as refused:
        async with adapter:
            pass
    assert refused.value.unreachable and refused.value.transient

    silent = Silent()
    try:
        adapter = OpcUaPoller(AdapterContext(opcua_equipment(silent.port), noop))
        with pytest.raises(AdapterError) as unanswered:
            async with adapter:
                pass
        assert not unanswered.value.unreachable and unanswered.value.transient
    finally:
        silent.close()


@pytest.mark.asyncio
async def test_a_refused_hsms_active_connect_is_unreachable_and_passive_mode_has_no_endpoint() -> None:
    port = closed_port()
    adapter = HsmsAdapter(AdapterContext(aoi_config(port), noop))
    assert adapter.endpoint() == ("127.0.0.1", port)
    with pytest.raises(AdapterError) as info:
        await adapter.session(adapter.ctx)
    assert info.value.unreachable and info.value.transient
    assert HsmsAdapter(AdapterContext(aoi_config(port, mode="passive"), noop)).endpoint() is None
