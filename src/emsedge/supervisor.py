"""The one loop that keeps a session alive: backoff with jitter, lost/restored events, health state.

Every adapter (polled or push) and the MQTT publisher run under a `Supervisor`. A *session* is one
connection's life: an async callable that connects, awaits `supervisor.connected()` once data flows,
and ends by raising `AdapterError(transient=...)` (returning counts as a transient end). The supervisor
then decides what happens next; sessions never sleep, retry or log their own end.

States (`EquipmentState`, on `health.state`)::

    connecting --first connected()--> connected --session ends, transient--> retrying --connected()--> ...
                                                 --session ends, permanent--> failed   --connected()--> ...

Invariants:

* **Backoff.** After a failed attempt the next one starts after `backoff_delays(config)`: capped
  exponential with jitter, every delay in [initial / 2, max]. The sequence restarts from `initial` after
  a session that was connected for at least `stable_after` seconds (0 for equipment: any session that
  delivered data; 10 s for the publisher, so a broker that accepts and then drops us is not hammered).
  `min_interval` is a floor between two attempt starts (HSMS T5).
* **Early retry (probe).** A session owner may pass `probe`: it is awaited beside every *transient*
  backoff delay, and when it returns first the next attempt starts at once. It is how the publisher keeps
  a grown backoff from delaying the first message after a broker outage (it checks the broker's TCP port,
  a cheap SYN, every `mqtt.probe_interval`; `wait_until_reachable`). A probe that does not apply to the
  error sleeps forever, and a permanent error never consults it (the slowest rate stays the slowest).
  A probe that saw the peer come back also restarts the backoff from `initial`: a peer that accepts
  connections again but is not ready yet (a cluster node still electing its leader answers "server
  unavailable") is retried at 0.5, 1, 2 s, not at the 30 s the outage had grown to.
  Probe checks are spread by `probe_delays` (each interval 0.5-1.5x its nominal length), so gateways that
  lost one broker at the same instant do not come back in lock-step.
  Equipment gets the same (`supervise_adapter`): an adapter with an `endpoint()` (`HasEndpoint`: Modbus
  TCP, OPC UA, HSMS active) whose last attempt failed at the TCP connect (`AdapterError.unreachable`)
  has that port checked every `probe_interval` of its equipment config; a machine that accepts TCP and
  then refuses the session is not probed and keeps the growing backoff.
* **Events once per outage.** `on_lost(reason)` runs once when a session that was connected ends, or
  when the very first attempt fails ("cannot connect"); further failed attempts of the same outage do
  not repeat it. `on_restored()` runs on every transition into `connected`, before the session hands on
  its first records (it is awaited inside `connected()`).
* **Log once per state change.** A line is written when the state changes, and within one outage once
  per distinct reason (so a failover between brokers logs each broker's error once, and a thousand
  identical retries log nothing). An unexpected exception (a library bug) is logged once with its
  traceback and then treated as transient.
* **The permanent-error policy** (the only one in the gateway): a permanent `AdapterError` (the
  equipment refuses our config: every node id unknown, a browse path that does not exist, security
  refused, an untrusted certificate) marks the state `failed`, logs one error naming the cause, and
  keeps retrying at the slowest rate, `backoff.max`. Why not "disabled until reload": the usual fix is on
  the equipment side (a machine program that adds the node, a server certificate that gets trusted), and
  nobody should have to restart or reload the gateway after it; at one attempt per `backoff.max` the
  cost to the equipment is negligible, and /healthz and `emsedge_equipment_state{state="failed"}` keep
  the fault visible. `disabled` is reserved for `enabled: false` in the config.
* **Time** comes from anyio's clock (`anyio.current_time`, `anyio.sleep`); tests drive it with trio's
  `MockClock`, so their timings are exact. Jitter comes from an injectable `rng`.
"""

from __future__ import annotations

import bisect
import enum
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from structlog.typing import FilteringBoundLogger

from emsedge.config import Backoff
from emsedge.errors import AdapterError
from emsedge.schema import EventType, Record, utc_iso

if TYPE_CHECKING:
    from emsedge.adapters.base import AdapterContext, PolledAdapter, PushAdapter

__all__ = [
    "POLL_DURATION_BUCKETS",
    "EquipmentHealth",
    "EquipmentState",
    "Messages",
    "SessionError",
    "Supervisor",
    "backoff_delays",
    "probe_delays",
    "supervise_adapter",
    "tcp_accepts",
    "wait_until_reachable",
]

Session = Callable[[], Awaitable[None]]

Probe = Callable[[AdapterError], Awaitable[None]]
"""Awaited beside a transient backoff delay with the error that ended the session; returning ends the wait
early (the peer looks reachable again). Sleeps forever when it has nothing to check for that error."""

POLL_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the `emsedge_poll_duration_seconds` histogram; +Inf is implied."""


class EquipmentState(enum.StrEnum):
    """Where a supervised session stands; exported in /healthz and as `emsedge_equipment_state`.

    connecting: started, no session has delivered data yet.  connected: the current session delivers.
    retrying: the last session ended for a transient reason; the next attempt follows the backoff.
    failed: the last session ended for a permanent reason (the equipment refuses our config); attempts
    continue at the slowest backoff rate (`backoff.max`) so a fixed machine comes back without a restart.
    disabled: `enabled: false` in the config; nothing runs.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    FAILED = "failed"
    DISABLED = "disabled"


@dataclass
class FileStats:
    """Counters of an adapter that reads result files, kept on `EquipmentHealth.files` (so they survive a
    reload) and exported by /metrics per equipment."""

    files_processed: int = 0
    files_rejected: int = 0
    files_duplicate: int = 0
    boards_emitted: int = 0
    parse_seconds: float = 0.0
    parse_count: int = 0
    move_errors: int = 0


@dataclass
class EquipmentHealth:
    """Live state of one supervised session, read by /healthz, /metrics and the status line.

    The supervisor alone writes `state`, `last_error` and `reconnects`; the poll loop and the adapters
    write the counters.
    """

    state: EquipmentState = EquipmentState.CONNECTING
    last_good_read: str | None = None
    last_error: str | None = None
    polls: int = 0
    poll_errors: int = 0
    skipped_cycles: int = 0
    values: int = 0
    reconnects: int = 0
    losses: dict[str, int] = field(default_factory=dict)
    poll_durations: list[float] = field(default_factory=list)
    # Cumulative histogram of every poll duration since start (non-cumulative counts per bucket of
    # POLL_DURATION_BUCKETS, last slot is +Inf); `poll_durations` keeps only the recent ones.
    poll_duration_counts: list[int] = field(default_factory=lambda: [0] * (len(POLL_DURATION_BUCKETS) + 1))
    poll_duration_sum: float = 0.0
    files: FileStats | None = None
    """Counters of an adapter that reads files (result_files); None for the others."""

    @property
    def connected(self) -> bool:
        """True while the current session delivers data (`state == connected`)."""
        return self.state is EquipmentState.CONNECTED

    @property
    def disabled(self) -> bool:
        """True when the equipment is not expected to deliver: `failed` or `disabled` (kept for /healthz)."""
        return self.state in (EquipmentState.FAILED, EquipmentState.DISABLED)

    def good_read(self, n_values: int, duration: float | None = None) -> None:
        self.last_good_read = utc_iso()
        self.values += n_values
        if duration is not None:
            self.poll_durations.append(duration)
            del self.poll_durations[:-256]
            self.poll_duration_counts[bisect.bisect_left(POLL_DURATION_BUCKETS, duration)] += 1
            self.poll_duration_sum += duration


def backoff_delays(config: Backoff, rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Capped exponential backoff with jitter in the upper half: each delay is 0.5-1x of the nominal one.

    The nominal delay starts at `initial` and doubles up to `max`; so every delay lies in
    [initial / 2, max] and the k-th in [d_k / 2, d_k] with d_k = min(initial * 2**k, max).
    """
    delay = config.initial
    while True:
        yield delay * (0.5 + rng() / 2)
        delay = min(delay * 2, config.max)


def probe_delays(interval: float, rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Gaps between two reachability checks: each uniform in [interval / 2, 1.5 * interval], mean `interval`.

    The wide spread is the point: gateways that lost a broker together drift apart within a few checks,
    so when it returns they reconnect spread over about one interval instead of in one burst.
    """
    while True:
        yield interval * (0.5 + rng())


async def wait_until_reachable(
    check: Callable[[], Awaitable[bool]], interval: float, rng: Callable[[], float] = random.random
) -> None:
    """Return after the first `check()` that says the peer accepts connections; checks follow `probe_delays`.

    Never checks at once: it is called right after an attempt failed, when a check would tell nothing new.
    """
    for delay in probe_delays(interval, rng):
        await anyio.sleep(delay)
        if await check():
            return


async def tcp_accepts(host: str, port: int, limit: float) -> bool:
    """True when `host:port` accepts a TCP connection within `limit` s (closed at once, nothing sent)."""
    with anyio.move_on_after(limit):
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


Reachable = Callable[[str, int, float], Awaitable[bool]]
"""(host, port, limit) -> whether the port accepts a TCP connection: `tcp_accepts`, or a fake in tests."""


class SessionError(AdapterError):
    """An `AdapterError` with extra log fields (e.g. `broker=`) the supervisor adds to its log line."""

    def __init__(self, message: str, *, transient: bool = True, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, transient=transient)
        self.fields: dict[str, Any] = dict(fields or {})


@dataclass(frozen=True, slots=True)
class Messages:
    """The log events a supervisor writes; `reason_field` names the field that carries the reason."""

    connected: str | None = "connected"
    lost: str = "connection lost"
    cannot_connect: str = "cannot connect"
    failed: str = "permanent error; retrying at the slowest backoff rate until the cause is fixed"
    unexpected: str = "unexpected error in the session; treated as transient"
    reason_field: str = "reason"


def _unwrap(exc: BaseException) -> BaseException:
    """The meaningful exception inside task-group wrapping: the first AdapterError, else the first leaf."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = list(exc.exceptions)
        exc = next((e for e in leaves if isinstance(e, AdapterError)), leaves[0])
    return exc


class Supervisor:
    """Runs a session again and again (see the module docstring)."""

    def __init__(
        self,
        backoff: Backoff,
        health: EquipmentHealth,
        log: FilteringBoundLogger,
        *,
        on_lost: Callable[[str], Awaitable[None]] | None = None,
        on_restored: Callable[[], Awaitable[None]] | None = None,
        stable_after: float = 0.0,
        min_interval: float = 0.0,
        messages: Messages = Messages(),
        rng: Callable[[], float] = random.random,
        probe: Probe | None = None,
    ) -> None:
        self.backoff = backoff
        self.health = health
        self.log = log
        self._on_lost = on_lost
        self._on_restored = on_restored
        self.stable_after = stable_after
        self.min_interval = min_interval
        self.messages = messages
        self._rng = rng
        self._probe = probe
        self.attempts = 0
        """Sessions started since construction (connect attempts), for tests and diagnostics."""
        self.next_attempt_at: float | None = None
        """anyio time at which the backoff ends (a probe may end it sooner); None while a session runs."""
        self._session_connected_at: float | None = None
        self._lost_announced = False
        self._logged: set[tuple[EquipmentState, str, tuple[tuple[str, str], ...]]] = set()
        self._logged_unexpected: str | None = None

    def delays(self) -> Iterator[float]:
        return backoff_delays(self.backoff, self._rng)

    async def connected(self, **fields: Any) -> None:
        """Called by the session once data flows; idempotent within one session."""
        if self._session_connected_at is not None:
            return
        self._session_connected_at = anyio.current_time()
        if self._lost_announced:
            self.health.reconnects += 1
        self.health.state = EquipmentState.CONNECTED
        self.health.last_error = None
        self._logged.clear()
        self._logged_unexpected = None
        if self.messages.connected is not None:
            self.log.info(self.messages.connected, **fields)
        self._lost_announced = False
        if self._on_restored is not None:
            await self._on_restored()

    async def run(self, session: Session, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run `session` forever (until cancelled). Readiness is reported at once: nobody waits for a link."""
        task_status.started()
        delays = self.delays()
        last_start: float | None = None
        while True:
            if last_start is not None and self.min_interval > 0:
                await anyio.sleep_until(last_start + self.min_interval)
            last_start = anyio.current_time()
            self._session_connected_at = None
            self.next_attempt_at = None
            self.attempts += 1
            try:
                await session()
                error: AdapterError = AdapterError("session ended")
            except Exception as raised:
                error = self._classify(raised)
            connected_at = self._session_connected_at
            self._session_connected_at = None
            if connected_at is not None and anyio.current_time() - connected_at >= self.stable_after:
                delays = self.delays()
            await self._ended(error, was_connected=connected_at is not None)
            delay = next(delays) if error.transient else self.backoff.max
            self.next_attempt_at = anyio.current_time() + delay
            if not error.transient:
                await anyio.sleep(delay)
            elif await self._wait(delay, error):
                delays = self.delays()  # the peer is back: a new schedule from `initial` (see "Early retry")

    async def _wait(self, delay: float, error: AdapterError) -> bool:
        """Sleep `delay`, or less when the probe says the peer is back (then True; see "Early retry")."""
        if self._probe is None:
            await anyio.sleep(delay)
            return False
        with anyio.move_on_after(delay) as waited:
            try:
                await self._probe(error)
            except Exception as exc:  # a probe bug must not end the loop: wait out the delay instead
                self.log.warning("reachability probe failed; waiting out the backoff", error=repr(exc))
                await anyio.sleep_forever()
        return not waited.cancelled_caught

    def _classify(self, raised: Exception) -> AdapterError:
        exc = _unwrap(raised)
        if isinstance(exc, AdapterError):
            return exc
        if isinstance(exc, TimeoutError):
            return AdapterError(f"timed out: {exc}" if str(exc) else "timed out")
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
        if reason != self._logged_unexpected:
            self._logged_unexpected = reason
            self.log.error(self.messages.unexpected, exc_info=exc, **{self.messages.reason_field: reason})
        return AdapterError(reason)

    async def _ended(self, error: AdapterError, *, was_connected: bool) -> None:
        reason = str(error)
        state = EquipmentState.RETRYING if error.transient else EquipmentState.FAILED
        previous = self.health.state
        self.health.state = state
        self.health.last_error = reason
        fields: dict[str, Any] = dict(getattr(error, "fields", {}))
        key = (state, reason, tuple(sorted((k, str(v)) for k, v in fields.items())))
        if key not in self._logged or previous is not state:
            self._logged.add(key)
            fields[self.messages.reason_field] = reason
            if state is EquipmentState.FAILED:
                self.log.error(self.messages.failed, retry_every_s=self.backoff.max, **fields)
            else:
                self.log.warning(self.messages.lost if was_connected else self.messages.cannot_connect, **fields)
        if not self._lost_announced:
            self._lost_announced = True
            if self._on_lost is not None:
                try:
                    await self._on_lost(reason)
                except Exception as exc:  # e.g. the buffer is shutting down: the loop must go on
                    self.log.warning("cannot hand on the connection_lost event", error=str(exc))


async def supervise_adapter(
    adapter: PolledAdapter | PushAdapter,
    ctx: AdapterContext,
    interval: float | None = None,
    *,
    rng: Callable[[], float] = random.random,
    reachable: Reachable = tcp_accepts,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Keep one adapter's sessions alive forever: the poll grid for a polled adapter, `session()` for a push one.

    `connection_lost` carries the adapter's offline records (bad-quality readings for every signal).
    An adapter with an `endpoint()` gets the early-retry probe (`_endpoint_probe`; `reachable` checks a port).
    The adapter imports are local: this module sits below the adapters (the publisher uses it too).
    """
    from emsedge.adapters.base import PolledAdapter, PushAdapter  # noqa: PLC0415 - see the docstring
    from emsedge.scheduler import poll_deadline, poll_grid  # noqa: PLC0415

    async def lost(reason: str) -> None:
        offline: Sequence[Record] = adapter.offline_records(reason)
        await ctx.emit([ctx.event(EventType.CONNECTION_LOST, reason=reason), *offline])

    async def restored() -> None:
        await ctx.emit([ctx.event(EventType.CONNECTION_RESTORED)])

    supervisor = Supervisor(
        ctx.equipment.backoff, ctx.health, ctx.log, on_lost=lost, on_restored=restored,
        min_interval=_min_interval(ctx), rng=rng, probe=_endpoint_probe(adapter, ctx, reachable, rng),
    )
    ctx.on_connected = supervisor.connected
    if isinstance(adapter, PushAdapter):
        push = adapter

        async def session() -> None:
            await push.session(ctx)

    elif isinstance(adapter, PolledAdapter):
        polled = adapter
        period = interval if interval is not None else float(getattr(ctx.equipment, "poll_interval", 1.0))
        deadline = poll_deadline(polled, ctx, period)

        async def session() -> None:
            async with polled:
                await poll_grid(polled.poll, ctx, period, deadline)

    else:
        raise AdapterError(f"{type(adapter).__name__} is not an adapter", transient=False)
    await supervisor.run(session, task_status=task_status)


def _min_interval(ctx: AdapterContext) -> float:
    """HSMS T5 (connect separation) is a floor between two connect attempts; 0 for the others."""
    t5 = getattr(getattr(ctx.equipment, "connection", None), "t5", None)
    return float(t5) if isinstance(t5, int | float) else 0.0


def _endpoint_probe(
    adapter: object, ctx: AdapterContext, reachable: Reachable, rng: Callable[[], float]
) -> Probe | None:
    """The early retry for equipment (see "Early retry"): after an attempt whose TCP connect failed
    (`AdapterError.unreachable`), check the adapter's `endpoint()` every `probe_interval` and return when it
    accepts. None without an endpoint capability or with `probe_interval: null`; for any other error the
    probe sleeps forever, so a machine that accepts TCP and refuses the session keeps the growing backoff.
    """
    from emsedge.adapters.spec import HasEndpoint  # noqa: PLC0415 - see supervise_adapter

    interval = getattr(ctx.equipment, "probe_interval", None)
    if not isinstance(adapter, HasEndpoint) or not isinstance(interval, int | float) or interval <= 0:
        return None
    period = float(interval)
    endpoint = adapter

    async def probe(error: AdapterError) -> None:
        target = endpoint.endpoint()
        if target is None or not error.unreachable:
            await anyio.sleep_forever()
            return
        host, port = target

        async def accepts() -> bool:
            return await reachable(host, port, period)

        await wait_until_reachable(accepts, period, rng)

    return probe
