"""The event loop's stalls, measured: one task sleeps `interval` and notes how late it woke.

Every machine, the buffer's feeder and the HTTP endpoint share one event loop; a decoder that runs
for seconds on it (a huge SECS-II message, a monster OPC UA array) starves all of them. The probe costs
one wake-up per `interval` (20 per second) and keeps, since the gateway is running (start-up, which
imports the adapters' libraries, is not counted):

* `max_seconds`, the longest lateness (`emsedge_event_loop_lag_seconds_max`): what every machine felt;
* `busy_max_seconds`, the longest lateness during which the gateway itself was busy, i.e. the lateness
  capped by the CPU time the process used meanwhile (`emsedge_event_loop_busy_seconds_max`). A stall
  caused by our own code (a decoder on the loop, a thread holding the GIL) uses CPU for its whole
  length; a stall because the host is overloaded (other processes on the cores) does not. Tests of
  the gateway's own bound assert on this one, so they hold on a loaded machine.

A new longest stall above `WARN_SECONDS` is logged (only new maxima, so a sick loop does not flood the
journal).
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
    def __init__(
        self,
        interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.max_seconds = 0.0
        self.busy_max_seconds = 0.0
        self.last_seconds = 0.0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            before, cpu_before = self._clock(), self._cpu_clock()
            await anyio.sleep(self.interval)
            lag = max(0.0, self._clock() - before - self.interval)
            busy = min(lag, max(0.0, self._cpu_clock() - cpu_before))
            self.last_seconds = lag
            self.busy_max_seconds = max(self.busy_max_seconds, busy)
            if lag > self.max_seconds:
                self.max_seconds = lag
                if lag > WARN_SECONDS:
                    log.warning("event loop stalled", seconds=round(lag, 3), busy_seconds=round(busy, 3))
