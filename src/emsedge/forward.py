"""The forwarder stage: buffer -> one output, deleting only after the output's acknowledgement.

One `Forwarder` per named output (`mqtt` today). Its loop:

    wait for the link -> (new connection: begin_replay, tell the buffer the largest message the broker takes)
    -> lease (bounded by count = the publisher's window and by bytes = buffer.max_inflight_bytes)
    -> publish_batch (returns after every PUBACK or refusal) -> settle(lease, acked, retry, dead): ONE transaction

Policy, in one place:
* A message the output refuses for good (`PublishResult.permanent`) is retried until it was tried
  `MAX_PUBLISH_ATTEMPTS` times, then it is a dead letter: counted durably per equipment and reason and
  announced to MES by the buffer (`buffer_dropped`, its seq in `dropped_seqs`). Everything else is retried.
  MQTT 5 reason codes the specification marks as temporary (`RETRYABLE_REASON_CODES`: 0x97 Quota exceeded,
  0x89 Server busy, 0x91 Packet identifier in use) are retried with capped exponential backoff, never
  dead-lettered, whatever the publisher called them.
* Replay: on every new connection the backlog is replayed (`begin_replay`), paced by `buffer.replay_rate`.
* Drain rate: messages delivered per second over the last `RATE_WINDOW` s, for the drain ETA in the status.
* Drain on stop: `drain()` keeps forwarding until the buffer is empty (records and announcements) or the
  deadline passes; what is left stays on disk for the next start.

Loss is counted only by the buffer (its durable counters); this module counts deliveries, never drops.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from emsedge.buffer import Buffer, BufferClosed, Lease, StoredMessage
from emsedge.publish.mqtt import PublishResult

log = structlog.get_logger("emsedge.forward")

MAX_PUBLISH_ATTEMPTS = 3
"""A record the broker refuses permanently this often goes to the dead-letter table (counted, announced)."""
RATE_WINDOW = 10.0
"""Seconds of deliveries the drain rate is averaged over."""
RETRYABLE_REASON_CODES = frozenset({0x89, 0x91, 0x97})
"""MQTT 5 reason codes that say "not now" rather than "never": back off and retry."""
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
IDLE_WAIT = 1.0
LINK_TROUBLE_PAUSE = 0.2
"""After a lease of which nothing was delivered: let the publisher notice the link state before leasing again."""


class Output(Protocol):
    """What the forwarder needs from an output (`MqttPublisher` is one)."""

    @property
    def connected(self) -> bool: ...

    @property
    def connection_epoch(self) -> int: ...

    @property
    def max_packet_size(self) -> int | None: ...

    async def wait_connected(self) -> None: ...

    async def publish_batch(self, items: Sequence[tuple[str, bytes]], *, qos: int) -> list[PublishResult]: ...


Delivered = Callable[[Sequence[StoredMessage], float], None]
"""Called with the delivered messages and the wall time of their acknowledgement (metrics)."""


class Forwarder:
    """Lease -> publish -> settle for one output, with the replay policy and the drain rate."""

    def __init__(
        self,
        buffer: Buffer,
        output: Output,
        *,
        name: str = "mqtt",
        qos: int,
        window: int,
        max_inflight_bytes: int,
        on_delivered: Delivered | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.buffer = buffer
        self.output = output
        self.name = name
        self.qos = qos
        self.window = window
        self.max_inflight_bytes = max_inflight_bytes
        self.on_delivered = on_delivered
        self._clock = clock
        self._wall = wall_clock
        self._window: deque[tuple[float, int]] = deque()  # (time, messages) per settle, oldest first
        self.delivered = 0
        """Messages acknowledged by the output since start."""
        self._backoff = 0.0

    @property
    def drain_rate(self) -> float:
        """Messages per second delivered over the last RATE_WINDOW seconds."""
        now = self._clock()
        recent = [(t, n) for t, n in self._window if now - t < RATE_WINDOW]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1.0)
        return sum(n for _, n in recent) / span

    def drain_eta(self) -> float | None:
        """Seconds until the backlog is delivered at the current rate; None while nothing is moving."""
        rate = self.drain_rate
        stats = self.buffer.stats()
        return round((stats.count + stats.announcements_pending) / rate, 1) if rate > 0 else None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Forward until cancelled, or until the buffer closed under it (the gateway is stopping)."""
        task_status.started()
        try:
            await self._loop()
        except BufferClosed:
            log.info("forwarder stopped: the buffer closed", output=self.name)

    async def _loop(self) -> None:
        epoch = -1
        while True:
            await self.output.wait_connected()
            if self.output.connection_epoch != epoch:
                epoch = self.output.connection_epoch
                self.buffer.set_max_message_bytes(self.output.max_packet_size)
                self.buffer.begin_replay(self.name)
                backlog = self.buffer.stats().backlog
                if backlog:
                    log.info("replaying backlog", backlog=backlog, output=self.name)
            await self.forward_once()

    async def forward_once(self) -> int:
        """One lease -> publish -> settle round; waits for records when there are none. Returns delivered."""
        lease = await self.buffer.lease(self.name, self.window, self.max_inflight_bytes)
        if not lease.messages:
            await self.buffer.wait_for_messages(self.name, IDLE_WAIT)
            return 0
        return await self._publish(lease)

    async def _publish(self, lease: Lease) -> int:
        messages = lease.messages
        results = await self.output.publish_batch([(m.topic, m.payload) for m in messages], qos=self.qos)
        acked: list[int] = []
        retry: list[int] = []
        dead: list[tuple[int, str]] = []
        delivered: list[StoredMessage] = []
        throttled = False
        for message, result in zip(messages, results, strict=True):
            if result.ok:
                acked.append(message.seq)
                delivered.append(message)
            elif result.reason_code in RETRYABLE_REASON_CODES:
                throttled = True
                retry.append(message.seq)
            elif result.permanent and message.attempts + 1 >= MAX_PUBLISH_ATTEMPTS and not message.announcement:
                dead.append((message.seq, result.reason or "rejected by broker"))
            else:
                retry.append(message.seq)
        await self.buffer.settle(lease, acked=acked, retry=retry, dead=dead)
        if delivered:
            self.delivered += len(delivered)
            now = self._clock()
            self._window.append((now, len(delivered)))
            while now - self._window[0][0] >= RATE_WINDOW:  # O(1) per settle: a busy line settles 100 times/s
                self._window.popleft()
            if self.on_delivered is not None:
                self.on_delivered(delivered, self._wall())
        if throttled:
            if not self._backoff:  # log once when throttling starts, not once per lease
                log.warning("output throttled by the broker; backing off and retrying", output=self.name)
            self._backoff = min(max(self._backoff * 2, BACKOFF_INITIAL), BACKOFF_MAX)
            await anyio.sleep(self._backoff)
        elif retry and not delivered:
            self._backoff = 0.0
            await anyio.sleep(LINK_TROUBLE_PAUSE)
        else:
            self._backoff = 0.0
        return len(delivered)

    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109 - a deadline is the point of a drain
        """Forward until the buffer is empty or `timeout` passes; returns what is left on disk."""
        self.buffer.announce_now(self.name)
        with anyio.move_on_after(timeout):
            while self.output.connected:
                stats = self.buffer.stats()
                out = stats.outputs.get(self.name)
                if stats.count == 0 and stats.announcements_pending == 0 and (out is None or out.leased == 0):
                    break
                await anyio.sleep(0.05)
        stats = self.buffer.stats()
        return stats.count + stats.announcements_pending
