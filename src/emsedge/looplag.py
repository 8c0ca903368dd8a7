"""The event loop's stalls, measured: one task sleeps `interval` and notes how late it woke.

Every machine, the buffer's feeder and the HTTP endpoint share one event loop; a decoder that runs
for seconds on it (a huge SECS-II message, a monster OPC UA array) starves all of them. The probe costs
one wake-up per `interval` (20 per second) and keeps the longest lateness since start and the latest,
exported as `emsedge_event_loop_lag_seconds_max` and `emsedge_event_loop_lag_seconds`. A new longest
stall above `WARN_SECONDS` is logged (only new maxima, so a sick loop does not flood the journal).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog
from anyio.abc import TaskStatus

log = structlog.get_logger("emsedge.looplag")

WARN_SECONDS = 0.5


class LoopLag:
    def __init__(self, interval: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self.max_seconds = 0.0
        self.last_seconds = 0.0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            before = self._clock()
            await anyio.sleep(self.interval)
            lag = max(0.0, self._clock() - before - self.interval)
            self.last_seconds = lag
            if lag > self.max_seconds:
                self.max_seconds = lag
                if lag > WARN_SECONDS:
                    log.warning("event loop stalled", seconds=round(lag, 3))
