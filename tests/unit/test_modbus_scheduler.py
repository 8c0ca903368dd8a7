"""The poll grid under the supervisor with fake adapters, on trio's MockClock: every time is exact.

Grid without drift, skipped cycles, deadlines, errors and backoff. Jitter is pinned (`rng=lambda: 1.0`
makes every backoff delay its nominal value), so attempt times are exact too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

import anyio
import pytest
from trio.testing import MockClock

from emsedge.adapters.base import AdapterContext, EquipmentState
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.errors import AdapterError
from emsedge.scheduler import next_slot, phase_offset, poll_deadline
from emsedge.schema import Record, telemetry
from emsedge.supervisor import supervise_adapter


def equipment(timeout: str = "200ms") -> ModbusEquipment:
    return ModbusEquipment.model_validate(
        {
            "id": "oven", "type": "reflow_oven", "adapter": "modbus",
            "connection": {"host": "127.0.0.1", "port": 1502, "timeout": timeout},
            "backoff": {"initial": "10ms", "max": "40ms"},
            "signals": [{"name": "t", "table": "holding", "address": 0}],
        }
    )


def on_mock_clock(test: Callable[[], Awaitable[None]]) -> None:
    """Run `test` on trio with a clock that jumps whenever every task waits: virtual, exact time."""
    anyio.run(test, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


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
                 connect_failures: int = 0, connect_error: AdapterError | None = None) -> None:
        self.durations = durations
        self.failures = failures or {}
        self.connect_failures = connect_failures
        self.connect_error = connect_error or AdapterError("cannot connect to fake")
        self.starts: list[float] = []
        self.enter_times: list[float] = []
        self.enters = 0
        self.exits = 0

    async def __aenter__(self) -> Self:
        self.enters += 1
        self.enter_times.append(anyio.current_time())
        if self.connect_failures:
            self.connect_failures -= 1
            raise self.connect_error
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


async def run_for(adapter: Any, ctx: AdapterContext, interval: float, seconds: float) -> float:
    """Supervise the adapter for `seconds` of virtual time; return the start time."""
    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: supervise_adapter(adapter, ctx, interval, rng=lambda: 1.0,
                                                             task_status=task_status))
        await anyio.sleep(seconds)
        tg.cancel_scope.cancel()
    return began


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


def test_polls_stay_on_their_grid_when_each_poll_takes_a_third_of_the_period() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.035])

    async def main() -> None:
        began = await run_for(adapter, ctx, 0.1, 1.25)
        start = began + phase_offset("oven", 0.1)
        # Poll 0 runs at once; poll k >= 1 at start + k * interval exactly. Drifting by the poll duration
        # would put poll 10 at 10 * 0.135 s.
        assert adapter.starts[0] == began
        assert adapter.starts[1:] == pytest.approx([start + k * 0.1 for k in range(1, len(adapter.starts))],
                                                   abs=1e-9)
        assert len(adapter.starts) == 1 + int((began + 1.25 - start) / 0.1)

    on_mock_clock(main)
    assert ctx.health.skipped_cycles == 0
    assert ctx.health.polls == len(adapter.starts) - (1 if adapter.starts[-1] > adapter.starts[0] + 1.25 - 0.035
                                                      else 0)
    assert ctx.health.values == ctx.health.polls
    assert ctx.health.poll_duration_sum == pytest.approx(0.035 * ctx.health.polls)
    assert ctx.health.last_good_read is not None
    assert rec.events() == ["connection_restored"]
    assert ctx.health.state is EquipmentState.CONNECTED


def test_an_overrunning_poll_skips_the_missed_slots_counts_them_and_returns_to_the_grid() -> None:
    ctx = AdapterContext(equipment=equipment(timeout="2s"), emit=Recorder().emit)
    adapter = FakeAdapter([0.01, 0.01, 0.5, 0.01])  # poll 2 (slot 2 of 0.2 s) overruns slots 3 and 4

    async def main() -> None:
        await run_for(adapter, ctx, 0.2, 1.75)

    on_mock_clock(main)
    t1 = adapter.starts[1]  # slot 1: polls 1.. are on the grid
    offsets = [(t - t1) / 0.2 for t in adapter.starts[1:]]
    assert offsets == pytest.approx([0, 1, 4, 5, 6, 7], abs=1e-9)
    assert ctx.health.skipped_cycles == 2


def test_a_transient_error_emits_connection_lost_with_bad_readings_then_reconnects_after_the_backoff() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={2: AdapterError("no answer from fake within 0.2s")})

    async def main() -> None:
        await run_for(adapter, ctx, 0.02, 0.3)

    on_mock_clock(main)
    assert rec.events()[:3] == ["connection_restored", "connection_lost", "connection_restored"]
    lost = next(
        i for i, r in enumerate(rec.records) if r.kind == "event" and r.body["event"]["type"] == "connection_lost"
    )
    assert rec.records[lost].body["event"]["reason"] == "no answer from fake within 0.2s"
    assert rec.records[lost + 1].body["readings"][0]["quality"] == "bad"
    assert adapter.enters == adapter.exits == 2
    assert adapter.enter_times[1] - adapter.starts[2] == pytest.approx(0.010)  # backoff.initial, no jitter
    assert ctx.health.poll_errors == 1
    assert ctx.health.reconnects == 1
    assert ctx.health.connected


def test_repeated_connect_failures_report_once_and_back_off_exponentially_to_the_cap() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], connect_failures=5)

    async def main() -> None:
        await run_for(adapter, ctx, 0.02, 0.4)

    on_mock_clock(main)
    assert rec.events() == ["connection_lost", "connection_restored"]
    gaps = [b - a for a, b in zip(adapter.enter_times, adapter.enter_times[1:], strict=False)]
    assert gaps == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.04], abs=1e-9)  # doubling, capped at backoff.max
    assert ctx.health.connected
    assert ctx.health.reconnects == 1


def test_a_poll_past_its_deadline_counts_as_a_lost_connection() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(timeout="10ms"), emit=rec.emit)
    adapter = FakeAdapter([0.0, 5.0, 0.0])
    adapter.poll_deadline = 0.1  # type: ignore[attr-defined]
    assert poll_deadline(adapter, ctx, 0.02) == 0.1

    async def main() -> None:
        await run_for(adapter, ctx, 0.02, 0.5)

    on_mock_clock(main)
    assert rec.events()[:3] == ["connection_restored", "connection_lost", "connection_restored"]
    lost = next(r for r in rec.records if r.kind == "event" and r.body["event"]["type"] == "connection_lost")
    assert lost.body["event"]["reason"] == "poll did not finish within its 0.1s deadline"
    assert adapter.enter_times[1] == pytest.approx(adapter.starts[1] + 0.1 + 0.01)  # deadline, then backoff


def test_the_default_deadline_follows_the_interval_and_connection_timeout() -> None:
    ctx = AdapterContext(equipment=equipment(timeout="2s"), emit=Recorder().emit)
    assert poll_deadline(FakeAdapter([0.0]), ctx, 0.5) == 6.0
    assert poll_deadline(FakeAdapter([0.0]), ctx, 5.0) == 15.0


def test_a_permanent_error_marks_the_equipment_failed_and_retries_at_the_slowest_rate_until_fixed() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], connect_failures=3, connect_error=AdapterError("unknown node", transient=False))
    seen: list[tuple[EquipmentState, bool]] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: supervise_adapter(adapter, ctx, 0.02, rng=lambda: 1.0))
            await anyio.sleep(0.001)
            seen.append((ctx.health.state, ctx.health.disabled))
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    assert seen == [(EquipmentState.FAILED, True)]
    gaps = [b - a for a, b in zip(adapter.enter_times, adapter.enter_times[1:], strict=False)]
    assert gaps == pytest.approx([0.04, 0.04, 0.04], abs=1e-9)  # backoff.max each time, never faster
    assert rec.events() == ["connection_lost", "connection_restored"]  # one outage, reported once
    assert ctx.health.state is EquipmentState.CONNECTED
    assert not ctx.health.disabled
    assert ctx.health.last_error is None


def test_an_unexpected_exception_is_treated_as_transient_and_does_not_escape() -> None:
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={1: KeyError("boom"), 2: KeyError("boom")})

    async def main() -> None:
        await run_for(adapter, ctx, 0.02, 0.3)

    on_mock_clock(main)
    reasons = [r.body["event"]["reason"] for r in rec.records if r.kind == "event" and "reason" in r.body["event"]]
    assert reasons == ["unexpected error: KeyError: 'boom'"]  # the second failure is the same outage
    assert rec.events() == ["connection_restored", "connection_lost", "connection_restored"]
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


def test_a_slow_emit_overlaps_the_next_poll_one_at_a_time_and_in_order() -> None:
    rec = SlowRecorder(delay=0.06)
    ctx = AdapterContext(equipment=equipment(timeout="2s"), emit=rec.emit)
    adapter = FakeAdapter([0.06])  # poll + emit = 0.12 s: one after the other they would miss every other slot

    async def main() -> None:
        await run_for(adapter, ctx, 0.1, 0.95)

    on_mock_clock(main)
    values = [r.body["readings"][0]["value"] for r in rec.records if r.kind == "telemetry"]
    assert values == list(range(len(values)))
    assert len(values) >= 8
    assert rec.most_running == 1
    assert ctx.health.skipped_cycles == 0


def test_the_last_good_readings_are_emitted_before_the_connection_lost_that_follows_them() -> None:
    rec = SlowRecorder(delay=0.05)
    ctx = AdapterContext(equipment=equipment(), emit=rec.emit)
    adapter = FakeAdapter([0.0], failures={2: AdapterError("no answer from fake within 0.2s")})

    async def main() -> None:
        await run_for(adapter, ctx, 0.02, 0.25)

    on_mock_clock(main)
    kinds = [
        r.body["event"]["type"] if r.kind == "event" else r.body["readings"][0]["value"] for r in rec.records
    ]
    lost = kinds.index("connection_lost")
    assert kinds[:lost] == ["connection_restored", 0, 1]
    assert kinds[lost + 1] is None  # the offline (bad) readings come with the event


def test_a_failing_emit_ends_the_session_as_an_unexpected_error() -> None:
    seen: list[Record] = []

    async def emit(records: Sequence[Record]) -> None:
        seen.extend(records)
        if len(seen) == 3:
            raise RuntimeError("buffer shutting down")

    ctx = AdapterContext(equipment=equipment(), emit=emit)
    adapter = FakeAdapter([0.0])

    async def main() -> None:
        await run_for(adapter, ctx, 0.02, 0.2)

    on_mock_clock(main)
    reasons = [r.body["event"].get("reason") for r in seen if r.kind == "event"]
    assert "unexpected error: RuntimeError: buffer shutting down" in reasons
    assert adapter.enters >= 2  # the session ended and a new one started
    assert adapter.exits >= 1
    assert ctx.health.connected
