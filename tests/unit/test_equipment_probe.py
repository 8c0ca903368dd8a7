"""The early-retry probe for equipment (issue 17 part 2), on trio's MockClock: a machine whose TCP port
refused connections long enough for the backoff to reach `backoff.max` is reconnected at the first probe
check after its port accepts again; a machine that accepts TCP and refuses the session keeps the growing
backoff, and so does an adapter without a TCP endpoint.

The jitter is pinned at its top (`rng=lambda: 1.0`): backoff delays are exactly 0.5, 1, 2, 4, 8, 16, 30 s
(the default `backoff`), and probe checks are 1.5 x `probe_interval` apart (their slowest).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

import anyio
import pytest
from trio.testing import MockClock

from emsedge.adapters.base import AdapterContext, EquipmentState, PolledAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.adapters.spec import HasEndpoint
from emsedge.errors import AdapterError
from emsedge.schema import Record, telemetry
from emsedge.supervisor import supervise_adapter

BACK_AT = 40.0
"""Fake time at which the machine's port accepts again: after the refused attempt at 31.5 s the backoff is
30 s, so waiting it out reconnects at 61.5 s."""


def on_mock_clock(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


def equipment(**overrides: Any) -> ModbusEquipment:
    return ModbusEquipment.model_validate({
        "id": "oven", "type": "reflow_oven", "adapter": "modbus",
        "connection": {"host": "10.0.0.7", "port": 502}, "poll_interval": "1s",
        "signals": [{"name": "t", "table": "holding", "address": 0}], **overrides,
    })


class Machine:
    """A polled adapter for a machine that is off until `back_at`. While off, a connect fails with
    `error` (by default the TCP-level refusal); `check` is the port probe the supervisor is given."""

    def __init__(self, back_at: float, error: AdapterError | None = None,
                 target: tuple[str, int] | None = ("10.0.0.7", 502), port_open: bool = False) -> None:
        self.back_at = back_at
        self.error = error or AdapterError("cannot connect to 10.0.0.7:502", unreachable=True)
        self.target = target
        self.port_open = port_open
        self.attempts: list[float] = []
        self.first_poll: float | None = None
        self.checks: list[tuple[str, int, float]] = []

    def endpoint(self) -> tuple[str, int] | None:
        return self.target

    async def check(self, host: str, port: int, limit: float) -> bool:
        now = anyio.current_time()
        self.checks.append((host, port, now))
        return self.port_open or now >= self.back_at

    async def __aenter__(self) -> Self:
        self.attempts.append(anyio.current_time())
        if anyio.current_time() < self.back_at:
            raise self.error
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self) -> Sequence[Record]:
        if self.first_poll is None:
            self.first_poll = anyio.current_time()
        return [telemetry("oven", "reflow_oven", [{"signal": "t", "value": 1, "unit": None, "quality": "good",
                                                  "ts": "x"}])]

    def offline_records(self, reason: str) -> Sequence[Record]:
        return []


def supervise(machine: Machine, config: ModbusEquipment, seconds: float = 80.0) -> AdapterContext:
    async def emit(records: Sequence[Record]) -> None:
        return None

    ctx = AdapterContext(equipment=config, emit=emit)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: supervise_adapter(
                machine, ctx, rng=lambda: 1.0, reachable=machine.check, task_status=task_status))
            await anyio.sleep(seconds)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    return ctx


def test_the_fake_machine_has_the_capabilities_of_a_tcp_adapter() -> None:
    machine = Machine(BACK_AT)
    assert isinstance(machine, PolledAdapter) and isinstance(machine, HasEndpoint)


def test_a_grown_equipment_backoff_is_cut_short_when_the_machines_port_accepts_again() -> None:
    machine = Machine(BACK_AT)
    ctx = supervise(machine, equipment())
    assert machine.attempts == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 40.5])
    # After 31.5 s the next attempt was 30 s away; the probe checked every 1.5 s and saw the port at 40.5 s.
    assert [t for _, _, t in machine.checks][-1] == pytest.approx(40.5)
    assert {(host, port) for host, port, _ in machine.checks} == {("10.0.0.7", 502)}
    assert machine.first_poll is not None and machine.first_poll - BACK_AT <= 1.5 + 1.0  # + one poll period
    assert ctx.health.state is EquipmentState.CONNECTED


def test_without_the_probe_the_machine_waits_out_the_grown_backoff() -> None:
    machine = Machine(BACK_AT)
    supervise(machine, equipment(probe_interval=None))
    assert machine.attempts[-1] == pytest.approx(61.5)  # 21.5 s after the port was back
    assert machine.checks == []


def test_a_machine_that_accepts_tcp_but_refuses_the_session_keeps_the_growing_backoff() -> None:
    """The port is open the whole time; the session fails at the protocol level: no early retry, ever."""
    machine = Machine(BACK_AT, error=AdapterError("bad answer from 10.0.0.7:502"), port_open=True)
    supervise(machine, equipment())
    assert machine.attempts == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5])
    assert machine.checks == []


def test_an_adapter_without_a_tcp_endpoint_keeps_the_growing_backoff() -> None:
    """E.g. HSMS passive mode: the equipment connects to us, there is no port of theirs to probe."""
    machine = Machine(BACK_AT, target=None)
    supervise(machine, equipment())
    assert machine.attempts == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5])
    assert machine.checks == []


def test_the_probe_interval_is_the_equipments_and_defaults_to_one_second() -> None:
    assert equipment().probe_interval == 1.0
    assert equipment(probe_interval="250ms").probe_interval == 0.25
    assert equipment(probe_interval=None).probe_interval is None
    machine = Machine(BACK_AT)
    supervise(machine, equipment(probe_interval="4s"))
    # 1.5 x 4 s after each refused attempt: after the one at 31.5 s, at 37.5 s and 43.5 s (port open at 40 s).
    assert [t for _, _, t in machine.checks if t > 31.5] == pytest.approx([37.5, 43.5])
    assert machine.attempts[-1] == pytest.approx(43.5)
