"""The event-loop lag probe notes how late it wakes; a blocking call shows as a stall of that length."""

from __future__ import annotations

import time

import anyio
import pytest

from emsedge.looplag import LoopLag


@pytest.mark.asyncio
async def test_a_blocking_call_on_the_loop_shows_as_the_longest_stall() -> None:
    probe = LoopLag(interval=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(probe.run)
        await anyio.sleep(0.05)
        assert probe.max_seconds < 0.15
        time.sleep(0.3)  # noqa: ASYNC251 - the stall under test
        while probe.max_seconds < 0.2:  # wait for the probe to wake and note it
            await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    assert 0.28 <= probe.max_seconds < 1.0
