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
from emsedge.supervisor import (
    EquipmentHealth,
    EquipmentState,
    Messages,
    SessionError,
    Supervisor,
    backoff_delays,
    probe_delays,
    wait_until_reachable,
)

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


# --- early retry: the probe beside a grown backoff (issue 17: the first message after a broker outage) ---

PLANT_BACKOFF = Backoff(initial=0.5, max=30.0)  # the publisher's default


class Peer:
    """A broker that refuses connections until `back_at` (fake time), then accepts; records attempt times."""

    def __init__(self, back_at: float) -> None:
        self.back_at = back_at
        self.attempts: list[float] = []
        self.connected_at: float | None = None
        self.supervisor: Supervisor | None = None

    async def session(self) -> None:
        assert self.supervisor is not None
        now = anyio.current_time()
        self.attempts.append(now)
        if now < self.back_at:
            raise AdapterError("connection refused")
        if self.connected_at is None:
            self.connected_at = now
        await self.supervisor.connected()
        await anyio.sleep_forever()

    async def accepts(self) -> bool:
        return anyio.current_time() >= self.back_at

    def probe(self, interval: float, rng: Callable[[], float]) -> Callable[[AdapterError], Awaitable[None]]:
        async def probe(error: AdapterError) -> None:
            await wait_until_reachable(self.accepts, interval, rng)

        return probe


def fleet_reconnect_times(n: int, back_at: float, probe_interval: float | None, seed: int = 17) -> list[float]:
    """Seconds after `back_at` at which each of `n` gateways (lost together at t=0) is connected again."""
    peers = [Peer(back_at) for _ in range(n)]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for index, peer in enumerate(peers):
                jitter = random.Random(seed * 1000 + index).random
                peer.supervisor = Supervisor(
                    PLANT_BACKOFF, EquipmentHealth(), structlog.get_logger("test"), rng=jitter,
                    probe=peer.probe(probe_interval, jitter) if probe_interval is not None else None,
                )
                await tg.start(peer.supervisor.run, peer.session)
            await anyio.sleep(back_at + 60)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    assert all(peer.connected_at is not None for peer in peers)
    return sorted(peer.connected_at - back_at for peer in peers)  # type: ignore[operator]


def test_probe_gaps_are_spread_evenly_between_half_and_one_and_a_half_intervals() -> None:
    gaps_drawn = list(itertools.islice(probe_delays(2.0, random.Random(3).random), 20_000))
    assert min(gaps_drawn) >= 1.0
    assert max(gaps_drawn) <= 3.0
    assert sum(gaps_drawn) / len(gaps_drawn) == pytest.approx(2.0, abs=0.02)
    quarters = [sum(1 for g in gaps_drawn if 1.0 + q * 0.5 <= g < 1.5 + q * 0.5) for q in range(4)]
    assert all(abs(count - 5000) < 300 for count in quarters), quarters  # uniform, not bunched at one end
    assert list(itertools.islice(probe_delays(1.0, lambda: 0.0), 2)) == [0.5, 0.5]
    assert list(itertools.islice(probe_delays(1.0, lambda: 1.0), 2)) == [1.5, 1.5]


def test_a_probe_that_sees_the_peer_back_ends_a_grown_backoff_at_its_next_check() -> None:
    peer = Peer(back_at=19.9)

    async def main() -> None:
        peer.supervisor = Supervisor(PLANT_BACKOFF, EquipmentHealth(), structlog.get_logger("test"),
                                     rng=lambda: 1.0, probe=peer.probe(1.0, lambda: 1.0))
        async with anyio.create_task_group() as tg:
            await tg.start(peer.supervisor.run, peer.session)
            await anyio.sleep(40.0)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    # Refused attempts follow the backoff (0.5, 1, 2, 4, 8 s: at 0.5, 1.5, 3.5, 7.5, 15.5 s); the next one
    # would be 16 s later, at 31.5 s. The probe checks every 1.5 s after 15.5 s and sees the port open at 20 s.
    assert peer.attempts[:6] == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5], abs=1e-9)
    assert peer.connected_at == pytest.approx(20.0, abs=1e-9)


def test_a_peer_the_probe_saw_return_but_not_ready_yet_is_retried_from_the_initial_delay() -> None:
    """A cluster node accepts TCP before it serves MQTT ("server unavailable"): the probe fired, so the
    backoff starts again at `initial` instead of continuing from the 16 s the outage had grown to."""
    attempts: list[tuple[float, str]] = []
    back_at = 19.9

    async def session() -> None:
        now = anyio.current_time()
        if now < back_at:
            attempts.append((now, "refused"))
            raise AdapterError("connection refused")
        if sum(1 for _, what in attempts if what == "unavailable") < 2:
            attempts.append((now, "unavailable"))
            raise AdapterError("server unavailable")
        attempts.append((now, "connected"))
        await supervisor.connected()
        await anyio.sleep_forever()

    async def accepts() -> bool:
        return anyio.current_time() >= back_at

    async def probe(error: AdapterError) -> None:
        if str(error) != "connection refused":  # as the publisher's: only a failed TCP connect is probed
            await anyio.sleep_forever()
        await wait_until_reachable(accepts, 1.0, lambda: 1.0)

    supervisor = Supervisor(PLANT_BACKOFF, EquipmentHealth(), structlog.get_logger("test"), rng=lambda: 1.0,
                            probe=probe)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run, session)
            await anyio.sleep(60.0)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    after = [(round(t, 6), what) for t, what in attempts if t >= back_at]
    assert after == [(20.0, "unavailable"), (20.5, "unavailable"), (21.5, "connected")]


def test_a_permanent_error_is_never_cut_short_by_the_probe() -> None:
    calls: list[float] = []
    probed: list[AdapterError] = []

    async def session() -> None:
        calls.append(anyio.current_time())
        raise AdapterError("security refused", transient=False)

    async def probe(error: AdapterError) -> None:
        probed.append(error)

    async def main() -> None:
        supervisor = Supervisor(BACKOFF, EquipmentHealth(), structlog.get_logger("test"), probe=probe)
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run, session)
            await anyio.sleep(2.0)
            tg.cancel_scope.cancel()

    on_mock_clock(main)
    assert gaps(calls) == pytest.approx([0.8, 0.8], abs=1e-9)
    assert probed == []


def test_a_probe_that_raises_is_logged_and_the_backoff_is_waited_out() -> None:
    calls: list[float] = []

    async def session() -> None:
        calls.append(anyio.current_time())
        raise AdapterError("refused")

    async def probe(error: AdapterError) -> None:
        raise OSError("probe bug")

    async def main() -> None:
        supervisor = Supervisor(BACKOFF, EquipmentHealth(), structlog.get_logger("test"), rng=lambda: 1.0,
                                probe=probe)
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run, session)
            await anyio.sleep(0.35)
            tg.cancel_scope.cancel()

    with capture_logs() as logs:
        on_mock_clock(main)
    assert gaps(calls) == pytest.approx([0.1, 0.2], abs=1e-9)
    assert any(e["event"].startswith("reachability probe failed") for e in logs)


def test_a_hundred_gateways_that_lost_one_broker_together_come_back_within_one_and_a_half_probe_intervals() -> None:
    """The plant case: 100 gateways, a 30 s outage, the default backoff (0.5 s to 30 s) and a 1 s probe."""
    with_probe = fleet_reconnect_times(100, back_at=30.0, probe_interval=1.0)
    assert with_probe[-1] <= 1.5 + 1e-9, "every gateway is back within one slowest probe gap"
    assert with_probe[-1] - with_probe[0] >= 0.75, "spread out, not in lock-step"
    busiest = max(sum(1 for t in with_probe if start <= t < start + 0.1) for start in with_probe)
    assert busiest <= 25, f"{busiest} of 100 reconnects within 100 ms"
    # The same fleet without the probe waits out its grown backoff (the 0.1 behaviour of issue 17).
    without = fleet_reconnect_times(100, back_at=30.0, probe_interval=None)
    assert without[len(without) // 2] > 5.0
    assert without[-1] > 10.0
