"""The supervisor on trio's MockClock: attempt times, events, log lines and health states are exact."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import anyio
import pytest
import structlog
from structlog.testing import capture_logs
from trio.testing import MockClock

from emsedge.config import Backoff
from emsedge.errors import AdapterError
from emsedge.supervisor import EquipmentHealth, EquipmentState, Messages, SessionError, Supervisor, backoff_delays

BACKOFF = Backoff(initial=0.1, max=0.8)


def on_mock_clock(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


class Script:
    """A session that plays one step per attempt: ("fail", error) or ("up", seconds, error)."""

    def __init__(self, steps: list[tuple[object, ...]]) -> None:
        self.steps = steps
        self.attempts: list[float] = []
        self.supervisor: Supervisor | None = None
        self.states: list[EquipmentState] = []

    async def __call__(self) -> None:
        assert self.supervisor is not None
        self.attempts.append(anyio.current_time())
        step = self.steps[min(len(self.attempts) - 1, len(self.steps) - 1)]
        if step[0] == "up":
            await self.supervisor.connected()
            self.states.append(self.supervisor.health.state)
            await anyio.sleep(float(step[1]))  # type: ignore[arg-type]
            error = step[2]
        else:
            error = step[1]
        if error is None:
            await anyio.sleep_forever()
        raise error  # type: ignore[misc]


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def lost(self, reason: str) -> None:
        self.seen.append(f"lost: {reason}")

    async def restored(self) -> None:
        self.seen.append("restored")


def supervise(script: Script, seconds: float, events: Events | None = None, **options: object) -> EquipmentHealth:
    health = EquipmentHealth()
    events = events or Events()
    script.supervisor = Supervisor(
        BACKOFF, health, structlog.get_logger("test").bind(equipment="m1"), on_lost=events.lost,
        on_restored=events.restored, rng=lambda: 1.0, **options,  # type: ignore[arg-type]
    )

    async def main() -> None:
        assert script.supervisor is not None
        async with anyio.create_task_group() as tg:
            await tg.start(script.supervisor.run, script)
            await anyio.sleep(seconds)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    return health


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_backoff_doubles_to_the_cap_and_its_jitter_stays_in_the_upper_half_of_each_delay() -> None:
    def take(rng: Callable[[], float]) -> list[float]:
        delays = backoff_delays(BACKOFF, rng)
        return [next(delays) for _ in range(6)]

    assert take(lambda: 1.0) == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8, 0.8])
    assert take(lambda: 0.0) == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4])
    nominal = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    generator = random.Random(7)
    for _ in range(200):
        for delay, bound in zip(take(generator.random), nominal, strict=True):
            assert bound / 2 <= delay <= bound


def test_failed_attempts_follow_the_backoff_exactly_and_a_session_that_delivered_restarts_it() -> None:
    refused = AdapterError("connection refused")
    script = Script([("fail", refused)] * 5 + [("up", 1.0, AdapterError("lost"))] + [("fail", refused)] * 2
                    + [("up", 100.0, None)])
    health = supervise(script, 10.0)
    assert gaps(script.attempts) == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8, 1.0 + 0.1, 0.2, 0.4], abs=1e-9)
    assert health.state is EquipmentState.CONNECTED
    assert health.reconnects == 2


def test_a_short_lived_connection_does_not_reset_the_backoff_when_stable_after_asks_for_more() -> None:
    flap = ("up", 1.0, AdapterError("dropped after CONNACK"))
    script = Script([flap] * 5)
    supervise(script, 12.0, stable_after=10.0)
    assert gaps(script.attempts)[:5] == pytest.approx([1.1, 1.2, 1.4, 1.8, 1.8], abs=1e-9)


def test_min_interval_is_a_floor_between_attempt_starts() -> None:
    script = Script([("fail", AdapterError("refused"))])
    supervise(script, 4.0, min_interval=0.5)
    assert gaps(script.attempts)[:5] == pytest.approx([0.5, 0.5, 0.5, 0.8, 0.8], abs=1e-9)


def test_lost_and_restored_are_emitted_once_per_outage() -> None:
    events = Events()
    refused = AdapterError("connection refused")
    script = Script([("fail", refused), ("fail", refused), ("up", 1.0, AdapterError("link lost")),
                     ("fail", AdapterError("timed out")), ("fail", refused), ("up", 100.0, None)])
    supervise(script, 10.0, events)
    assert events.seen == ["lost: connection refused", "restored", "lost: link lost", "restored"]
    assert script.states == [EquipmentState.CONNECTED, EquipmentState.CONNECTED]


def test_one_log_line_per_state_change_and_per_new_reason_not_per_attempt() -> None:
    refused = AdapterError("connection refused")
    script = Script([("fail", refused)] * 20 + [("fail", AdapterError("no route to host"))] * 5
                    + [("up", 1.0, AdapterError("link lost"))] + [("fail", refused)] * 20 + [("up", 100.0, None)])
    with capture_logs() as logs:
        supervise(script, 60.0)
    lines = [(e["event"], e.get("reason")) for e in logs]
    assert lines == [
        ("cannot connect", "connection refused"),
        ("cannot connect", "no route to host"),
        ("connected", None),
        ("connection lost", "link lost"),
        ("cannot connect", "connection refused"),
        ("connected", None),
    ]
    assert all(e["equipment"] == "m1" for e in logs)


def test_log_fields_and_names_come_from_the_session_error_and_the_messages() -> None:
    script = Script([("fail", SessionError("connection refused", fields={"broker": "mqtt://a:1883"})),
                     ("fail", SessionError("connection refused", fields={"broker": "mqtt://b:1883"}))])
    with capture_logs() as logs:
        supervise(script, 5.0, messages=Messages(cannot_connect="mqtt connect failed", reason_field="error"))
    assert [(e["event"], e["broker"], e["error"]) for e in logs] == [
        ("mqtt connect failed", "mqtt://a:1883", "connection refused"),
        ("mqtt connect failed", "mqtt://b:1883", "connection refused"),
    ]


def test_a_permanent_error_marks_failed_retries_at_the_slowest_rate_and_recovers_by_itself() -> None:
    events = Events()
    unknown = AdapterError("every node id is unknown", transient=False)
    script = Script([("fail", AdapterError("refused"))] * 2 + [("fail", unknown)] * 3 + [("up", 100.0, None)])
    health = EquipmentHealth()
    states: list[EquipmentState] = []

    async def main() -> None:
        script.supervisor = Supervisor(BACKOFF, health, structlog.get_logger("test"), on_lost=events.lost,
                                       on_restored=events.restored, rng=lambda: 1.0)
        async with anyio.create_task_group() as tg:
            await tg.start(script.supervisor.run, script)
            while len(script.attempts) < 6:
                states.append(health.state)
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    with capture_logs() as logs:
        on_mock_clock(main)
    assert gaps(script.attempts) == pytest.approx([0.1, 0.2, 0.8, 0.8, 0.8], abs=1e-9)  # cap after permanent
    assert EquipmentState.FAILED in states
    assert health.state is EquipmentState.CONNECTED
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["reason"] == "every node id is unknown"
    assert errors[0]["retry_every_s"] == 0.8
    assert events.seen == ["lost: refused", "restored"]


def test_an_unexpected_exception_is_logged_once_with_its_traceback_and_retried() -> None:
    script = Script([("fail", KeyError("boom"))] * 4 + [("up", 100.0, None)])
    with capture_logs() as logs:
        health = supervise(script, 5.0)
    tracebacks = [e for e in logs if "exc_info" in e]
    assert len(tracebacks) == 1
    assert tracebacks[0]["reason"] == "unexpected error: KeyError: 'boom'"
    assert health.state is EquipmentState.CONNECTED
    assert len(script.attempts) == 5


def test_a_session_that_returns_counts_as_a_transient_end() -> None:
    calls: list[float] = []
    health = EquipmentHealth()

    async def session() -> None:
        calls.append(anyio.current_time())

    async def main() -> None:
        supervisor = Supervisor(BACKOFF, health, structlog.get_logger("test"), rng=lambda: 1.0)
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run, session)
            await anyio.sleep(0.35)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    assert gaps(calls) == pytest.approx([0.1, 0.2], abs=1e-9)
    assert (health.state, health.last_error) == (EquipmentState.RETRYING, "session ended")


def test_an_adapter_error_inside_a_task_group_is_unwrapped() -> None:
    async def session() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_raise, AdapterError("bad id", transient=False))

    health = EquipmentHealth()

    async def main() -> None:
        supervisor = Supervisor(BACKOFF, health, structlog.get_logger("test"))
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run, session)
            await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    assert (health.state, health.last_error) == (EquipmentState.FAILED, "bad id")


async def _raise(error: Exception) -> None:
    raise error
