"""The event-loop lag probe notes how late it wakes; a stall our own code causes (CPU busy) is told apart
from one where the process simply was not scheduled."""

from __future__ import annotations

import time

import anyio
import pytest

from emsedge.looplag import LoopLag


def _spin(cpu_seconds: float) -> None:
    """Burn this much CPU time (not wall time: on a loaded host that would be less CPU)."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


@pytest.mark.asyncio
async def test_a_busy_call_on_the_loop_shows_as_the_longest_stall_and_as_busy() -> None:
    probe = LoopLag(interval=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(probe.run)
        await anyio.sleep(0.05)
        _spin(0.3)
        with anyio.fail_after(5):
            while probe.max_seconds < 0.2:  # noqa: ASYNC110 - the probe is the thing observed
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    assert probe.max_seconds >= 0.28
    assert probe.busy_max_seconds >= 0.25


@pytest.mark.asyncio
async def test_a_stall_without_cpu_use_is_lateness_but_not_busy() -> None:
    probe = LoopLag(interval=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(probe.run)
        await anyio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 - stands for the OS not scheduling the process
        with anyio.fail_after(5):
            while probe.max_seconds < 0.2:  # noqa: ASYNC110 - the probe is the thing observed
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    assert probe.max_seconds >= 0.28
    assert probe.busy_max_seconds < 0.2
