"""The poll scheduler with fake adapters: grid without drift, skipped cycles, errors and backoff."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

import anyio
import pytest

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.errors import AdapterError
from emsedge.scheduler import next_slot, phase_offset, poll_deadline, run_polled
from emsedge.schema import Record, telemetry


def equipment(timeout: str = "200ms") -> ModbusEquipment:
    return ModbusEquipment.model_validate(
        {
            "id": "oven", "type": "reflow_oven", "adapter": "modbus",
            "connection": {"host": "127.0.0.1", "port": 1502, "timeout": timeout},
            "backoff": {"initial": "10ms", "max": "40ms"},
            "signals": [{"name": "t", "table": "holding", "address": 0}],
        }
    )


class Recorder:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def emit(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def events(self) -> list[str]:
        return [r.body["event"]["type"] for r in self.records if r.kind == "event"]


class FakeAdapter:
    """Polls take `durations[k]` seconds (last one repeats); `failures` maps poll number -> exception."""

    def __init__(self, durations: list[float], failures: dict[int, BaseException] | None = None,
                 connect_failures: int = 0) -> None:
        self.durations = durations
        self.failures = failures or {}
        self.connect_failures = connect_failures
        self.starts: list[float] = []
        self.enters = 0
        self.exits = 0

    async def __aenter__(self) -> Self:
        self.enters += 1
        if self.connect_failures:
            self.connect_failures -= 1
            raise AdapterError("cannot connect to fake")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exits += 1

    async def poll(self) -> Sequence[Record]:
        k = len(self.starts)
        self.starts.append(anyio.current_time())
        await anyio.sleep(self.durations[min(k, len(self.durations) - 1)])
        if k in self.failures:
            raise self.failures[k]
        return [telemetry("oven", "reflow_oven", [{"signal": "t", "value": k, "unit": None, "quality": "good",
                                                  "ts": "x"}])]

    def offline_records(self, reason: str) -> Sequence[Record]:
        return [telemetry("oven", "reflow_oven", [{"signal": "t", "value": None, "unit": None,
                                                  "quality": "bad", "ts": "x"}])]


async def run_for(adapter: Any, ctx: AdapterContext, interval: float, seconds: float) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(run_polled, adapter, ctx, interval)
        await anyio.sleep(seconds)
        tg.cancel_scope.cancel()


async def run_until(adapter: Any, ctx: AdapterContext, interval: float, done: Callable[[], bool]) -> None:
    """Run the poll loop until `done()` holds (checked every 10 ms), at most 5 s."""
    async with anyio.create_task_group() as tg:
        await tg.start(run_polled, adapter, ctx, interval)
        with anyio.fail_after(5):
            while not done():  # noqa: ASYNC110 - the condition lives in plain test objects
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


def test_phases_spread_equipment_over_the_period_and_stay_stable() -> None:
    phases = [phase_offset(f"machine-{n}", 1.0) for n in range(200)]
    assert all(0 <= p < 1.0 for p in phases)
    assert phase_offset("machine-7", 1.0) == phases[7]
    assert len({int(p * 10) for p in phases}) == 10  # every tenth of the period is used
    assert phase_offset("machine-7", 2.0) == 2 * phases[7]


def test_next_slot_skips_the_slots_an_overrun_poll_missed() -> None:
    assert next_slot(0.0, 1.0, 0, 0.3) == (1, 0)
    assert next_slot(0.0, 1.0, 3, 3.99) == (4, 0)
    assert next_slot(0.0, 1.0, 0, 2.5) == (3, 2)
    assert next_slot(10.0, 0.5, 4, 12.4) == (5, 0)
    assert next_slot(10.0, 0.5, 4, 13.7) == (8, 3)


@pytest.mark.asyncio
async def test_polls_stay_on_their_grid_when_each_poll_takes_a_third_of_the_period() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.035])
    await run_for(adapter, ctx, 0.1, 1.25)
    starts = adapter.starts
    assert len(starts) >= 10
    # Poll 0 runs at once; polls 1.. sit on the grid. Drifting by the poll duration would put poll 10
    # at 9 * 0.135 = 1.2 s after poll 1; the grid puts it at 0.9 s. One late wake-up does not carry over.
    for k, t in enumerate(starts[1:]):
        assert abs(t - starts[1] - k * 0.1) < 0.045, (k, t - starts[1])
    phase = phase_offset("oven", 0.1)
    assert abs(starts[1] - starts[0] - (0.1 + phase)) < 0.045
    assert ctx.health.skipped_cycles == 0
    assert ctx.health.polls == len(starts) or ctx.health.polls == len(starts) - 1
    assert ctx.health.values == ctx.health.polls
    assert ctx.health.last_good_read is not None
    assert rec.events() == ["connection_restored"]


@pytest.mark.asyncio
async def test_an_overrunning_poll_skips_the_missed_slots_counts_them_and_returns_to_the_grid() -> None:
    ctx = AdapterContext(equipment=equipment(timeout="2s"), emit=Recorder().emit)
    adapter = FakeAdapter([0.01, 0.01, 0.5, 0.01])  # poll 2 (slot 2 of 0.2 s) overruns slots 3 and 4
    await run_for(adapter, ctx, 0.2, 1.75)
    t1 = adapter.starts[1]  # slot 1: polls 1.. are on the grid
    offsets = [round((t - t1) / 0.2, 2) for t in adapter.starts[1:]]
    assert offsets[:4] == pytest.approx([0, 1, 4, 5], abs=0.25)
    assert ctx.health.skipped_cycles == 2
    assert all(abs(o - round(o)) < 0.25 for o in offsets)


@pytest.mark.asyncio
async def test_a_transient_error_emits_connection_lost_with_bad_readings_then_reconnects() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={2: AdapterError("no answer from fake within 0.2s")}, connect_failures=0)
    await run_for(adapter, ctx, 0.02, 0.3)
    assert rec.events()[:3] == ["connection_restored", "connection_lost", "connection_restored"]
    lost = next(
        i for i, r in enumerate(rec.records) if r.kind == "event" and r.body["event"]["type"] == "connection_lost"
    )
    assert rec.records[lost].body["event"]["reason"] == "no answer from fake within 0.2s"
    assert rec.records[lost + 1].body["readings"][0]["quality"] == "bad"
    assert adapter.enters == adapter.exits >= 2
    assert ctx.health.poll_errors == 1
    assert ctx.health.reconnects == 1
    assert ctx.health.connected


@pytest.mark.asyncio
async def test_repeated_connect_failures_report_once_and_back_off() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], connect_failures=5)
    await run_for(adapter, ctx, 0.02, 0.4)
    assert rec.events()[:2] == ["connection_lost", "connection_restored"]
    assert rec.events().count("connection_lost") == 1
    assert 2 <= adapter.enters - 1 <= 5  # backoff 10-40 ms with jitter: attempts are spaced, not a busy loop
    assert ctx.health.connected


@pytest.mark.asyncio
async def test_a_poll_past_its_deadline_counts_as_a_lost_connection() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(timeout="10ms"), emit=rec.emit)
    adapter = FakeAdapter([0.0, 5.0, 0.0])
    adapter.poll_deadline = 0.1  # type: ignore[attr-defined]
    assert poll_deadline(adapter, ctx, 0.02) == 0.1  # type: ignore[arg-type]
    await run_for(adapter, ctx, 0.02, 0.5)
    assert rec.events()[:3] == ["connection_restored", "connection_lost", "connection_restored"]
    lost = next(r for r in rec.records if r.kind == "event" and r.body["event"]["type"] == "connection_lost")
    assert "deadline" in lost.body["event"]["reason"]


def test_the_default_deadline_follows_the_interval_and_connection_timeout() -> None:
    ctx = AdapterContext(equipment=equipment(timeout="2s"), emit=Recorder().emit)
    assert poll_deadline(FakeAdapter([0.0]), ctx, 0.5) == 6.0  # type: ignore[arg-type]
    assert poll_deadline(FakeAdapter([0.0]), ctx, 5.0) == 15.0  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_permanent_error_disables_the_equipment_and_returns() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={0: AdapterError("unknown node", transient=False)})
    with anyio.fail_after(2):
        await run_polled(adapter, ctx, 0.02)  # type: ignore[arg-type]
    assert ctx.health.disabled
    assert ctx.health.last_error == "unknown node"


@pytest.mark.asyncio
async def test_an_unexpected_exception_is_treated_as_transient_and_does_not_escape() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={1: KeyError("boom"), 2: KeyError("boom")})
    await run_until(adapter, ctx, 0.02, lambda: rec.events()[-2:] == ["connection_lost", "connection_restored"])
    reasons = [r.body["event"]["reason"] for r in rec.records if r.kind == "event" and "reason" in r.body["event"]]
    assert reasons[0] == "unexpected error: KeyError: 'boom'"
    assert rec.events()[-1] == "connection_restored"
    assert len(adapter.starts) > 3


class SlowRecorder(Recorder):
    """An emit that takes `delay` seconds (a durable commit), tracking how many run at once."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.running = 0
        self.most_running = 0

    async def emit(self, records: Sequence[Record]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await anyio.sleep(self.delay)
            self.records.extend(records)
        finally:
            self.running -= 1


@pytest.mark.asyncio
async def test_a_slow_emit_overlaps_the_next_poll_one_at_a_time_and_in_order() -> None:
    rec = SlowRecorder(delay=0.06)
    ctx = AdapterContext(equipment=equipment(timeout="2s"), emit=rec.emit)
    adapter = FakeAdapter([0.06])  # poll + emit = 0.12 s: one after the other they would miss every other slot
    await run_for(adapter, ctx, 0.1, 0.95)
    values = [r.body["readings"][0]["value"] for r in rec.records if r.kind == "telemetry"]
    assert values == list(range(len(values)))
    assert len(values) >= 6
    assert rec.most_running == 1
    assert ctx.health.skipped_cycles == 0


@pytest.mark.asyncio
async def test_the_last_good_readings_are_emitted_before_the_connection_lost_that_follows_them() -> None:
    rec = SlowRecorder(delay=0.05)
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={2: AdapterError("no answer from fake within 0.2s")})
    await run_for(adapter, ctx, 0.02, 0.25)
    kinds = [
        r.body["event"]["type"] if r.kind == "event" else r.body["readings"][0]["value"] for r in rec.records
    ]
    lost = kinds.index("connection_lost")
    assert kinds[:lost] == ["connection_restored", 0, 1]
    assert kinds[lost + 1] is None  # the offline (bad) readings come with the event


@pytest.mark.asyncio
async def test_a_failing_emit_ends_the_session_as_an_unexpected_error() -> None:
    seen: list[Record] = []

    async def emit(records: Sequence[Record]) -> None:
        seen.extend(records)
        if len(seen) == 3:
            raise RuntimeError("buffer shutting down")

    ctx = AdapterContext(equipment=equipment(), emit=emit)
    adapter = FakeAdapter([0.0])
    await run_until(adapter, ctx, 0.02, lambda: adapter.enters >= 2 and ctx.health.connected)
    reasons = [r.body["event"].get("reason") for r in seen if r.kind == "event"]
    assert "unexpected error: RuntimeError: buffer shutting down" in reasons
    assert adapter.enters >= 2  # the session ended and a new one started
    assert adapter.exits >= 1
