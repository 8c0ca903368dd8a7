"""Durable acknowledgement against the real daemon: an AOI keeps sending S6F11 while the disk is full.

The gateway runs as `emsedge run` with its buffer on a real 2 MiB tmpfs that the test fills; the AOI is
the project's GEM equipment simulator (passive HSMS) waiting up to two minutes for each S6F12. While the
buffer cannot commit, no report is acknowledged; once space returns the held report is stored, then
acknowledged, and reaches the broker. Mounting needs root or CAP_SYS_ADMIN; otherwise the test is skipped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from integration.hsms_support import CEID_BOARD_INSPECTED, aoi_config, aoi_simulator
from support import Mosquitto, Subscriber
from support.daemon import Daemon, gateway_config

from emsedge.adapters.hsms.connection import HsmsClosed


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs: writes beyond it fail with ENOSPC."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    with path.open("wb") as ballast:
        try:
            while True:
                ballast.write(b"\0" * 65536)
                ballast.flush()
        except OSError:
            pass


def inspected(checker: Subscriber) -> list[dict[str, Any]]:
    return [p for p in checker.payloads() if p.get("event", {}).get("type") == "unit_inspected"]


@pytest.mark.asyncio
async def test_a_report_sent_while_the_disk_is_full_is_acknowledged_only_once_it_is_stored(
    tmp_path: Path, small_fs: Path, durable_broker: Mosquitto, checker: Subscriber, daemons: list[Daemon]
) -> None:
    eq = aoi_simulator(t3=120.0)
    answers: list[object] = []

    async def send() -> None:
        try:
            answers.append(await eq.send_event(CEID_BOARD_INSPECTED))
        except HsmsClosed as exc:
            answers.append(exc)

    async with anyio.create_task_group() as tg:
        port = await tg.start(eq.serve)
        host = aoi_config(port)
        equipment = host.model_dump(mode="json", exclude_unset=True)
        equipment.pop("status_variables")
        config = gateway_config(tmp_path, durable_broker.url, 0, equipment=[equipment],
                                buffer={"path": str(small_fs / "buffer.db"), "min_free_bytes": 0, "linger": "5ms"})
        daemon = Daemon(config, tmp_path / "daemon.log")
        daemon.start()
        daemons.append(daemon)
        with anyio.fail_after(20):
            await eq.wait_ready()
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0  # the path works
        await anyio.to_thread.run_sync(lambda: checker.wait_for(lambda p: len(inspected(checker)) == 1))

        ballast = small_fs / "ballast"
        await anyio.to_thread.run_sync(fill, ballast)
        eq.board["serial"] = "PCB-HELD"  # type: ignore[attr-defined]
        tg.start_soon(send)
        timers = host.connection
        await anyio.sleep(max(timers.t3, timers.t5, timers.t6, timers.t7, timers.t8) + 3.0)
        assert answers == [], "a report was acknowledged while the disk was full"
        assert daemon.alive(), daemon.log()[-3000:]

        ballast.unlink()
        with anyio.fail_after(30):
            while not answers:  # noqa: ASYNC110 - the sender task appends its answer
                await anyio.sleep(0.05)
        assert answers == [0]  # stored, then acknowledged, on the same connection
        got = await anyio.to_thread.run_sync(
            lambda: checker.wait_for(lambda p: len(inspected(checker)) >= 2, timeout=20))
        assert got
        serials = [p["event"].get("serial") for p in inspected(checker)]
        assert "PCB-HELD" in serials
        assert await anyio.to_thread.run_sync(daemon.stop) == 0
        tg.cancel_scope.cancel()
