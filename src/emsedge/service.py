"""Being a well-behaved service: sd_notify, the systemd watchdog, `/healthz` and `/metrics`.

* `SystemdNotifier` speaks the sd_notify protocol itself: one datagram per message on the AF_UNIX
  socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Without that variable
  every call is a no-op, so the same code runs under systemd, Docker and a terminal. A failed send is
  logged once and never raised: losing a status line must not take the gateway down.
* `run_watchdog` sends `WATCHDOG=1` at half of `$WATCHDOG_USEC` from a task on the main event loop. The
  pings are only as alive as the loop: a blocked or hung loop stops them and systemd restarts the unit.
  They also stop while the buffer's owner thread has been stuck in one disk command (a commit in fsync on
  a dying SD card) for longer than `WRITER_STUCK_AFTER`: every adapter is blocked behind it, so systemd
  should restart the unit. `/healthz` reports `failing` (HTTP 503) for the same condition.
* `/healthz` and `/metrics` are answered from the live `GatewayState` at request time (`GatewayState.health`,
  `metrics_text`); the Prometheus collector reads the same objects at scrape time, so nothing is copied or
  cached between scrapes. The listener that serves them, with the status page, is `emsedge.web.server`.

Invariant: nothing here mutates `GatewayState` except `observe_publish_latency`.
"""

from __future__ import annotations

import bisect
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from emsedge.buffer import BufferStats
from emsedge.supervisor import POLL_DURATION_BUCKETS, EquipmentHealth, EquipmentState

log = structlog.get_logger("emsedge.service")

PUBLISH_LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds from a record's creation to its PUBACK; the tail covers replay of a backlog after an outage."""

REQUEST_TIMEOUT = 5.0
"""Deadline for reading one request and writing its answer; a slow client is dropped, never waited on."""

MAX_REQUEST_BYTES = 16 * 1024

WRITER_STUCK_AFTER = 30.0
"""Seconds one buffer disk command (a commit, a lease) may run before the writer counts as wedged: the
watchdog stops pinging and /healthz turns `failing`. A healthy commit takes milliseconds; a busy SD card a
few seconds; 30 s is well beyond both and below systemd's usual WatchdogSec restart budget of a minute."""


# ---------------------------------------------------------------------------------------------------
# Live state


@dataclass
class GatewayState:
    """What the runtime knows about itself, read by /healthz, /metrics and systemd's STATUS= line.

    The runtime owns and updates it; this module only reads it (except the publish-latency histogram,
    which it fills through `observe_publish_latency`). The callables are evaluated at read time so the
    figures are never stale.
    """

    gateway_id: str
    version: str
    started_at: str
    equipment: dict[str, EquipmentHealth]
    equipment_info: dict[str, tuple[str, str]]
    buffer_stats: Callable[[], BufferStats]
    broker_connected: Callable[[], bool]
    broker_url: Callable[[], str | None]
    messages_buffered: int = 0
    messages_published: int = 0
    publish_latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(PUBLISH_LATENCY_BUCKETS) + 1)
    )
    publish_latency_sum: float = 0.0
    started_monotonic: float = field(default_factory=time.monotonic)
    loop_lag: Callable[[], tuple[float, float, float]] | None = None
    broker_failovers: Callable[[], int] | None = None
    """Connections made to a different broker of `mqtt.url` than the previous one (`MqttPublisher.failovers`)."""
    cfx: Callable[[], dict[str, Any]] | None = None
    """The CFX output's snapshot (`CfxPublisher.snapshot`: connected, broker, address, counters, and the
    request listeners' snapshots under `requests` and `listen` when configured), when `cfx:` is configured."""
    """Event-loop lateness in seconds (`emsedge.looplag`): latest, longest, longest while busy."""

    def observe_publish_latency(self, seconds: float) -> None:
        self.publish_latency_counts[bisect.bisect_left(PUBLISH_LATENCY_BUCKETS, seconds)] += 1
        self.publish_latency_sum += seconds

    def _buffer(self) -> BufferStats | None:
        try:
            return self.buffer_stats()
        except Exception as exc:  # a closed or broken buffer must not break health reporting
            log.debug("buffer stats unavailable", error=str(exc))
            return None

    @property
    def messages_dropped(self) -> int:
        """Records lost by a sanctioned policy, cumulative: read from the buffer's durable counters (the one
        place loss is counted), never kept here."""
        stats = self._buffer()
        return int(_stat(stats, "dropped_total", 0))

    def writer_stuck_for(self, now: float | None = None) -> float:
        """Seconds the buffer's owner thread has been in its current disk command (0 when idle)."""
        stats = self._buffer()
        if stats is None or getattr(stats, "writer_busy_since", None) is None:
            return 0.0
        return stats.writer_stuck_for(time.monotonic() if now is None else now)

    def failovers(self) -> int:
        return self.broker_failovers() if self.broker_failovers is not None else 0

    def writer_wedged(self) -> bool:
        return self.writer_stuck_for() > WRITER_STUCK_AFTER

    def status_line(self) -> str:
        """E.g. "5 equipment, 4 connected, backlog 0" (plus ", broker disconnected" when it is)."""
        states = [h.state for h in self.equipment.values()]
        connected = states.count(EquipmentState.CONNECTED)
        stats = self._buffer()
        backlog = _stat(stats, "count", "?")
        line = f"{len(self.equipment)} equipment, {connected} connected, backlog {backlog}"
        for state in (EquipmentState.FAILED, EquipmentState.DISABLED):
            if states.count(state):
                line += f", {states.count(state)} {state.value}"
        if not self.broker_connected():
            line += ", broker disconnected"
        return line

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for /healthz.

        `ok`: broker and every enabled piece of equipment connected, buffer writable (`failed` equipment,
        refused for a permanent reason, is not ok; `disabled` in the config is). `degraded`: something is
        down but no data is being lost (that is what the buffer is for), still HTTP 200. `failing`: the
        buffer cannot accept records, HTTP 503 so Docker or a load balancer notices.
        """
        stats = self._buffer()
        writable = bool(_stat(stats, "writable", stats is not None))
        broker = self.broker_connected()
        equipment: dict[str, Any] = {}
        all_up = True
        for equipment_id, h in sorted(self.equipment.items()):
            kind, adapter = self.equipment_info.get(equipment_id, ("?", "?"))
            all_up &= h.connected or h.state is EquipmentState.DISABLED
            equipment[equipment_id] = {
                "type": kind,
                "adapter": adapter,
                "state": h.state.value,
                "connected": h.connected,
                "disabled": h.disabled,
                "last_good_read": h.last_good_read,
                "last_error": h.last_error,
                "polls": h.polls,
                "poll_errors": h.poll_errors,
                "reconnects": h.reconnects,
            }
        stuck = self.writer_stuck_for()
        wedged = stuck > WRITER_STUCK_AFTER
        cfx = self._cfx(stats)
        cfx_up = cfx is None or bool(cfx["connected"])
        status = "failing" if not writable or wedged else ("ok" if broker and cfx_up and all_up else "degraded")
        body: dict[str, Any] = {
            "status": status,
            "gateway": self.gateway_id,
            "version": self.version,
            "started_at": self.started_at,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "broker": {"connected": broker, "url": self.broker_url(), "failovers": self.failovers()},
            "buffer": {
                "writable": writable,
                "backlog": _stat(stats, "count", None),
                "bytes": _stat(stats, "bytes", None),
                "oldest_age_s": _oldest_age(stats),
                "dead_letters": _stat(stats, "dead_letters", None),
                "evicted": _stat(stats, "evicted_total", None),
                "dropped_total": _stat(stats, "dropped_total", None),
                "dropped_total_by_equipment": dict(_stat(stats, "dropped_by_equipment", {}) or {}),
                "writer_stuck_s": round(stuck, 1),
                "writer_wedged": wedged,
                "last_error": _stat(stats, "last_error", None),
            },
            "messages": {
                "buffered": self.messages_buffered,
                "published": self.messages_published,
                "dropped": self.messages_dropped,
            },
            "equipment": equipment,
        }
        if cfx is not None:
            body["cfx"] = cfx
        return (503 if status == "failing" else 200), body

    def _cfx(self, stats: BufferStats | None) -> dict[str, Any] | None:
        """The CFX output's state plus its pending records (leased or waiting) from the buffer's cursor."""
        if self.cfx is None:
            return None
        info = dict(self.cfx())
        out = (_stat(stats, "outputs", {}) or {}).get("cfx")
        info["pending"] = (out.leased + out.unleased_live + out.unleased_backlog) if out is not None else None
        return info


def _stat(stats: BufferStats | None, name: str, default: Any) -> Any:
    return getattr(stats, name, default) if stats is not None else default


def _oldest_age(stats: BufferStats | None) -> float | None:
    """Age of the oldest record on the buffer clock (a wall-clock step cannot fool it); None when empty."""
    if stats is None or getattr(stats, "oldest_age_base", None) is None:
        oldest = _stat(stats, "oldest_created", None)
        return round(max(time.time() - oldest, 0.0), 1) if oldest else None
    return round(stats.oldest_age_s(time.monotonic()), 1)


# ---------------------------------------------------------------------------------------------------
# Prometheus


class GatewayCollector:
    """A custom collector: every scrape reads `GatewayState` as it is now (no shadow counters)."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        # Only `equipment` on the per-poll series: type and adapter live on emsedge_equipment_info (join on
        # equipment in PromQL). Fewer labels per sample keeps a scrape, which runs on the event loop, short.
        labels = ["equipment"]
        info = GaugeMetricFamily(
            "emsedge_equipment_info", "Kind and adapter of each piece of equipment.",
            labels=["equipment", "type", "adapter"],
        )
        polls = CounterMetricFamily("emsedge_polls", "Polls (or push reads) completed.", labels=labels)
        errors = CounterMetricFamily("emsedge_poll_errors", "Polls that failed.", labels=labels)
        skipped = CounterMetricFamily("emsedge_skipped_cycles", "Poll cycles skipped on overrun.", labels=labels)
        values = CounterMetricFamily("emsedge_values_collected", "Signal values read.", labels=labels)
        reconnects = CounterMetricFamily("emsedge_reconnects", "Connections restored after a loss.", labels=labels)
        connected = GaugeMetricFamily("emsedge_equipment_connected", "1 while connected.", labels=labels)
        disabled = GaugeMetricFamily(
            "emsedge_equipment_disabled", "1 when disabled (permanent error or config).", labels=labels
        )
        state = GaugeMetricFamily(
            "emsedge_equipment_state", "1 for the state the equipment is in (connecting, connected, retrying, "
            "failed, disabled), 0 for the others.", labels=["equipment", "state"],
        )
        lost = CounterMetricFamily(
            "emsedge_equipment_lost_values", "Values lost at the source before they became records "
            "(e.g. reason=opcua_queue_overflow).", labels=["equipment", "reason"],
        )
        durations = HistogramMetricFamily(
            "emsedge_poll_duration_seconds", "Duration of successful polls.", labels=labels
        )
        for equipment_id, h in sorted(s.equipment.items()):
            kind, adapter = s.equipment_info.get(equipment_id, ("?", "?"))
            info.add_metric([equipment_id, kind, adapter], 1.0)
            lv = [equipment_id]
            polls.add_metric(lv, h.polls)
            errors.add_metric(lv, h.poll_errors)
            skipped.add_metric(lv, h.skipped_cycles)
            values.add_metric(lv, h.values)
            reconnects.add_metric(lv, h.reconnects)
            connected.add_metric(lv, 1.0 if h.connected else 0.0)
            disabled.add_metric(lv, 1.0 if h.disabled else 0.0)
            for candidate in EquipmentState:
                state.add_metric([equipment_id, candidate.value], 1.0 if h.state is candidate else 0.0)
            for reason, count in sorted(h.losses.items()):
                lost.add_metric([equipment_id, reason], count)
            durations.add_metric(
                lv, _buckets(POLL_DURATION_BUCKETS, h.poll_duration_counts), sum_value=h.poll_duration_sum
            )
        yield from (info, polls, errors, skipped, values, reconnects, connected, disabled, state, lost, durations)
        yield from _file_metrics(s.equipment)

        yield _counter("emsedge_messages_buffered", "Records committed to the buffer.", s.messages_buffered)
        yield _counter("emsedge_messages_published", "Messages acknowledged by the broker.", s.messages_published)
        yield _counter(
            "emsedge_messages_dropped", "Messages lost: evicted from the buffer or dead-lettered.", s.messages_dropped
        )
        latency = HistogramMetricFamily("emsedge_publish_latency_seconds", "Record creation to broker PUBACK.")
        latency.add_metric(
            [], _buckets(PUBLISH_LATENCY_BUCKETS, s.publish_latency_counts), sum_value=s.publish_latency_sum
        )
        yield latency

        stats = s._buffer()
        if stats is not None:
            yield _gauge("emsedge_backlog_messages", "Undelivered records in the buffer.", _stat(stats, "count", 0))
            yield _gauge("emsedge_buffer_bytes", "Size of the buffer's records.", _stat(stats, "bytes", 0))
            yield _gauge(
                "emsedge_backlog_oldest_age_seconds", "Age of the oldest undelivered record (0 when empty).",
                _oldest_age(stats) or 0.0,
            )
            lost = CounterMetricFamily(
                "emsedge_records_lost",
                "Records lost by a sanctioned policy, cumulative over the buffer file's life, by equipment and "
                "reason (max_bytes, max_age, dead_letter, too_large, adapter reasons).",
                labels=["equipment", "reason"],
            )
            for equipment, by_reason in sorted((_stat(stats, "losses", {}) or {}).items()):
                for reason, n in sorted(by_reason.items()):
                    lost.add_metric([equipment, reason], float(n))
            yield lost
            yield _gauge("emsedge_loss_announcements_pending", "buffer_dropped announcements not yet delivered.",
                         _stat(stats, "announcements_pending", 0))
            yield _gauge("emsedge_buffer_writer_stuck_seconds",
                         "Seconds the buffer writer has been in its current disk command (0 when idle).",
                         s.writer_stuck_for())
            yield _counter("emsedge_buffer_evicted", "Records evicted by the size or age cap.",
                           _stat(stats, "evicted_total", 0))
            yield _gauge("emsedge_dead_letters", "Messages refused for good.", _stat(stats, "dead_letters", 0))
            yield _counter("emsedge_buffer_duplicates_suppressed",
                           "Records not stored because their own id (e.g. a tester result re-read after a crash) "
                           "was appended before: nothing is sent twice.", _stat(stats, "duplicates_suppressed", 0))
            yield _gauge("emsedge_buffer_writable", "1 while the buffer accepts records.",
                         1.0 if _stat(stats, "writable", True) else 0.0)
        yield _gauge("emsedge_broker_connected", "1 while connected to the MQTT broker.",
                     1.0 if s.broker_connected() else 0.0)
        yield _counter("emsedge_mqtt_failovers", "Connections made to a different broker of mqtt.url than the "
                       "previous connection (a cluster node lost, the gateway moved on).", s.failovers())
        current = s.broker_url() if s.broker_connected() else None
        if current is not None:
            broker = GaugeMetricFamily("emsedge_mqtt_broker", "1 for the broker (node) the gateway is connected to.",
                                       labels=["broker"])
            broker.add_metric([current], 1.0)
            yield broker
        cfx = s._cfx(s._buffer())
        if cfx is not None:
            yield _gauge("emsedge_cfx_connected", "1 while the CFX output's AMQP link is attached.",
                         1.0 if cfx["connected"] else 0.0)
            yield _gauge("emsedge_cfx_pending", "Records the CFX output has not delivered yet.", cfx["pending"] or 0)
            for key, text in (
                ("sent", "CFX messages sent to the broker."),
                ("accepted", "CFX messages the broker settled as accepted."),
                ("rejected", "CFX messages the broker rejected."),
                ("released", "CFX messages the broker released or modified (retried)."),
                ("heartbeats", "CFX.Heartbeat messages sent."),
                ("connects", "AMQP links established."),
            ):
                yield _counter(f"emsedge_cfx_{key}", text, cfx["counters"][key])
            yield from _cfx_request_metrics(cfx)
        build = GaugeMetricFamily("emsedge_build_info", "Gateway id and version.", labels=["gateway", "version"])
        build.add_metric([s.gateway_id, s.version], 1.0)
        yield build
        yield _gauge("emsedge_uptime_seconds", "Seconds since the gateway started.",
                     time.monotonic() - s.started_monotonic)
        if s.loop_lag is not None:
            latest, longest, busy = s.loop_lag()
            yield _gauge("emsedge_event_loop_lag_seconds", "Lateness of the latest event-loop probe.", latest)
            yield _gauge("emsedge_event_loop_lag_seconds_max",
                         "Longest event-loop stall since running (every machine waits that long).", longest)
            yield _gauge("emsedge_event_loop_busy_seconds_max",
                         "Longest event-loop stall the gateway's own work caused (stall capped by CPU used).", busy)


CFX_REQUEST_OUTCOMES = ("answered", "not_answered", "rejected", "reply_failed")
"""How a CFX request ended; each request counts in exactly one (not_supported is a kind of answer, counted
on its own family), so their sum is the requests received minus those still in flight."""


def _cfx_request_metrics(cfx: Mapping[str, Any]) -> Iterator[Metric]:
    """The CFX request listeners' counters, by transport: `broker` (`cfx.requests`, the snapshot's
    `requests`) and `direct` (`cfx.listen`, its `listen`). Nothing when neither is configured."""
    listeners = [
        (transport, cfx[key], bool(cfx[key][up]))
        for transport, key, up in (("broker", "requests", "connected"), ("direct", "listen", "listening"))
        if cfx.get(key) is not None
    ]
    if not listeners:
        return
    labels = ["transport"]
    up = GaugeMetricFamily(
        "emsedge_cfx_request_listener_up",
        "1 while the CFX request listener answers (broker: its links are attached; direct: it listens).",
        labels=labels,
    )
    received = CounterMetricFamily("emsedge_cfx_requests_received", "CFX requests received.", labels=labels)
    outcomes = CounterMetricFamily(
        "emsedge_cfx_requests",
        "CFX requests by how they ended (answered, not_answered: a WhoIsThere not meant for us, rejected: not a "
        "CFX envelope or no such handle, reply_failed: the response could not be delivered).",
        labels=["transport", "outcome"],
    )
    not_supported = CounterMetricFamily(
        "emsedge_cfx_requests_not_supported",
        "CFX requests answered with NotSupportedResponse (also counted in emsedge_cfx_requests_total).",
        labels=labels,
    )
    for transport, snapshot, is_up in listeners:
        counters = snapshot["counters"]
        up.add_metric([transport], 1.0 if is_up else 0.0)
        received.add_metric([transport], counters["received"])
        for outcome in CFX_REQUEST_OUTCOMES:
            outcomes.add_metric([transport, outcome], counters[outcome])
        not_supported.add_metric([transport], counters["not_supported"])
    yield from (up, received, outcomes, not_supported)
    direct = cfx.get("listen")
    if direct is not None:
        yield _gauge("emsedge_cfx_listen_connections", "Requester connections open on cfx.listen.",
                     direct["open_connections"])
        yield _counter("emsedge_cfx_listen_connections_accepted", "Requester connections accepted on cfx.listen.",
                       direct["counters"]["connections"])
        yield _counter("emsedge_cfx_listen_refused_links",
                       "Links a requester attached to an address that is no handle of this gateway.",
                       direct["counters"]["refused_links"])


def _file_metrics(equipment: Mapping[str, EquipmentHealth]) -> Iterator[Metric]:
    """Per-equipment counters of the adapters that read result files (only equipment that has them)."""
    with_files = [(eq, h.files) for eq, h in sorted(equipment.items()) if h.files is not None]
    if not with_files:
        return
    labels = ["equipment"]
    processed = CounterMetricFamily(
        "emsedge_result_files_processed", "Result files whose events the buffer made durable.", labels=labels
    )
    rejected = CounterMetricFamily(
        "emsedge_result_files_rejected", "Result files rejected (file_rejected, moved to error).", labels=labels
    )
    duplicate = CounterMetricFamily(
        "emsedge_result_files_duplicate", "Identical result files dropped again (nothing emitted).", labels=labels
    )
    boards = CounterMetricFamily(
        "emsedge_boards_emitted", "Boards (unit_tested events) emitted from result files.", labels=labels
    )
    parse = SummaryMetricFamily(
        "emsedge_result_file_parse_seconds", "Time spent parsing result files.", labels=labels
    )
    for equipment_id, f in with_files:
        lv = [equipment_id]
        processed.add_metric(lv, f.files_processed)
        rejected.add_metric(lv, f.files_rejected)
        duplicate.add_metric(lv, f.files_duplicate)
        boards.add_metric(lv, f.boards_emitted)
        parse.add_metric(lv, count_value=f.parse_count, sum_value=f.parse_seconds)
    yield from (processed, rejected, duplicate, boards, parse)


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=float(value or 0))


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=float(value or 0))


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts -> Prometheus' cumulative `le` buckets ending with +Inf."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip([*map(_le, bounds), "+Inf"], counts, strict=False):
        total += n
        out.append((bound, float(total)))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def metrics_text(state: GatewayState) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(state))
    return bytes(generate_latest(registry))


# ---------------------------------------------------------------------------------------------------
# HTTP


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http.listen {listen!r} is not host:port (e.g. 127.0.0.1:9108)")
    host = host.strip("[]") or "0.0.0.0"  # an explicit ':port' asks for all interfaces
    return host, int(port)


async def serve_http(
    listen: str, state: GatewayState, *, task_status: TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve /healthz and /metrics (and the status page) until cancelled; reports the bound port.

    The listener lives in `emsedge.web.server` (uvicorn + starlette); this keeps the old entry point.
    A listener that cannot bind is logged and the gateway runs on without it (started with None).
    """
    from emsedge.web.server import serve_http as serve  # noqa: PLC0415 - emsedge.web imports this module

    await serve(listen, state, task_status=task_status)


# ---------------------------------------------------------------------------------------------------
# systemd


class SystemdNotifier:
    """sd_notify without libsystemd: `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`, `RELOADING=1`.

    Enabled only when `$NOTIFY_SOCKET` is set. Identical consecutive STATUS lines are sent once.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET") or None
        self.address: str | bytes | None = None
        if raw is not None:
            self.address = ("\0" + raw[1:]) if raw.startswith("@") else raw
        self._watchdog_usec = _watchdog_usec(env)
        self._last_status: str | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of `$WATCHDOG_USEC` (systemd's advice), None without a watchdog."""
        return self._watchdog_usec / 2e6 if self._watchdog_usec else None

    def notify(self, message: str) -> bool:
        """Send one datagram; False (logged once) when it cannot be delivered."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify failed", socket=os.environ.get("NOTIFY_SOCKET"), error=str(exc))
                self._failed = True
            return False
        if self._failed:
            log.info("sd_notify works again")
            self._failed = False
        return True

    def ready(self) -> None:
        self.notify(f"READY=1\nMAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        if text == self._last_status:
            return
        if self.notify(f"STATUS={text}"):
            self._last_status = text

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping: draining the buffer")
        self._last_status = None

    def reloading(self) -> None:
        # systemd >= 253 wants the monotonic time with RELOADING=1 to match it with the following READY=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC: not a number", value=raw)
        return None
    return usec if usec > 0 else None


STATUS_EVERY = 10.0
"""Without a watchdog, how often the STATUS= line is refreshed (only sent when it changed)."""


async def run_watchdog(
    notifier: SystemdNotifier, state: GatewayState, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Ping `WATCHDOG=1` and refresh `STATUS=` from the main loop until cancelled.

    Runs on the event loop on purpose: if the loop hangs, the pings stop and systemd restarts the unit.
    Without `$NOTIFY_SOCKET` it reports started and returns (nothing to do).
    """
    if not notifier.enabled:
        task_status.started()
        return
    interval = notifier.watchdog_interval()
    if interval is not None:
        log.info("systemd watchdog enabled", ping_every_s=round(interval, 3))
    task_status.started()
    period = min(interval, STATUS_EVERY) if interval is not None else STATUS_EVERY
    wedged_logged = False
    while True:
        wedged = state.writer_wedged()
        if wedged != wedged_logged:
            wedged_logged = wedged
            if wedged:
                log.error("buffer writer wedged: watchdog pings stopped", stuck_s=round(state.writer_stuck_for(), 1),
                          bound_s=WRITER_STUCK_AFTER)
            else:
                log.info("buffer writer moving again: watchdog pings resumed")
        if interval is not None and not wedged:
            notifier.watchdog()
        notifier.status(state.status_line())
        await anyio.sleep(period)


__all__ = [
    "PUBLISH_LATENCY_BUCKETS",
    "WRITER_STUCK_AFTER",
    "GatewayCollector",
    "GatewayState",
    "SystemdNotifier",
    "metrics_text",
    "parse_listen",
    "run_watchdog",
    "serve_http",
]
