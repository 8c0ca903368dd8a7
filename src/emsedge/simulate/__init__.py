"""The virtual SMT line: real protocol servers on loopback ports, driven by one clock and one board flow.

    emsedge simulate -c config/virtual-line.yaml [--port-base N] [--hold] [--duration S] [--events FILE]

* pick-and-place: OPC UA server (`pick_and_place.py`)
* reflow oven: Modbus TCP server (`reflow_oven.py`)
* AOI: passive SECS/GEM equipment over HSMS (`aoi.py`)
* ICT: an in-circuit tester writing one i3070 log per test into a folder (`ict.py`)

`line.py` holds the model (boards, machines, reels, temperatures); `schedule.py` the fault schedule that
produces alarms, state changes and outages on purpose. `VirtualLine.run` owns every server and the clock
in one task group; the demo runs it in-process, the tests as `emsedge simulate`.

Invariant: the clock loop never awaits the network for long: OPC UA writes are local, Modbus reads copy
the latest image, HSMS messages go through the AOI's sender task, and server restarts (outages) run in
their own tasks.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from emsedge.errors import ConfigError
from emsedge.packaged import find_file
from emsedge.simulate.config import VirtualLineConfig, load_virtual_line
from emsedge.simulate.line import Line, LineEvent

if TYPE_CHECKING:
    from emsedge.simulate.ict import IctStation

__all__ = ["LineEvent", "VirtualLine", "VirtualLineConfig", "load_virtual_line", "main_simulate"]

log = structlog.get_logger("emsedge.simulate")

EX_CONFIG = 78


def event_json(event: LineEvent) -> dict[str, Any]:
    """A line event as plain JSON (ground truth for tests and the `--events` log)."""
    out: dict[str, Any] = {"at": round(event.at, 3), "kind": event.kind, "machine": event.machine}
    if event.board is not None:
        out["board"] = event.board.summary()
    if event.code is not None:
        out["code"] = event.code
    if event.text is not None:
        out["text"] = event.text
    return out


class VirtualLine:
    """All three machines on one clock. `await tg.start(line.run)` returns once every server listens."""

    def __init__(self, config: VirtualLineConfig, on_event: Callable[[LineEvent], None] | None = None, *,
                 hold: bool = False) -> None:
        """With `hold`, the servers come up but the clock starts only at `release()` (the demo waits for
        the gateway to connect, so MES sees the first board too)."""
        from emsedge.simulate.aoi import AoiEquipment  # noqa: PLC0415 - import cost only when running
        from emsedge.simulate.ict import IctStation  # noqa: PLC0415
        from emsedge.simulate.pick_and_place import PickAndPlaceServer  # noqa: PLC0415
        from emsedge.simulate.reflow_oven import ReflowOvenServer  # noqa: PLC0415

        self.config = config
        self.line = Line(config)
        self.on_event = on_event
        self.pick_and_place = PickAndPlaceServer(self.line)
        self.reflow_oven = ReflowOvenServer(self.line)
        self.aoi = AoiEquipment(self.line)
        self.ict: IctStation | None = None
        if config.ict.enabled:
            self.ict = IctStation(config.ict.folder, rng=random.Random(config.line.seed + 3071),
                                  tester_zone=ZoneInfo(config.ict.timezone), program=config.ict.program,
                                  tester=config.ict.id)
        self._tg: TaskGroup | None = None
        self._released = anyio.Event()
        self._ict_lock = anyio.Lock()
        if not hold:
            self._released.set()
        self._machine_ids = {
            "line": "line",
            "pick_and_place": config.pick_and_place.id,
            "reflow_oven": config.reflow_oven.id,
            "aoi": config.aoi.id,
            "ict": config.ict.id,
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self.reflow_oven.start()
            await self.pick_and_place.start()
            await tg.start(self.aoi.serve)
            tg.start_soon(self.aoi.run_sender)
            cfg = self.config
            log.info(
                "virtual line up",
                pick_and_place=self.pick_and_place.url,
                reflow_oven=f"modbus://{cfg.reflow_oven.host}:{cfg.reflow_oven.port}",
                aoi=f"hsms://{cfg.aoi.host}:{cfg.aoi.port}",
                ict=str(cfg.ict.folder) if cfg.ict.enabled else None,
                speed=cfg.line.speed,
            )
            task_status.started()
            try:
                await self._clock()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.pick_and_place.stop()
                    await self.reflow_oven.stop()
                self.aoi.stop()

    def release(self) -> None:
        """Start the clock of a line created with `hold=True` (idempotent)."""
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    async def _clock(self) -> None:
        await self._released.wait()
        speed = self.config.line.speed
        tick = self.config.line.tick
        start = time.monotonic()
        n = 0
        while True:
            events = self.line.advance((time.monotonic() - start) * speed)
            self.reflow_oven.refresh()
            for event in events:
                self._handle(event)
            await self.pick_and_place.publish()
            n += 1
            await anyio.sleep(max(0.0, start + n * tick - time.monotonic()))

    def _handle(self, event: LineEvent) -> None:
        if event.kind == "board_inspected" and event.board is not None:
            self.aoi.board_inspected(event.board)
        elif event.kind == "board_tested" and event.board is not None and self.ict is not None:
            self._test_files(event.board.serial, list(event.board.test_results))
        elif event.kind in ("alarm_set", "alarm_cleared") and event.machine == "aoi" and event.code is not None:
            self.aoi.alarm(event.code, active=event.kind == "alarm_set")
        elif event.kind in ("outage_start", "outage_end") and self._tg is not None:
            self._tg.start_soon(self._outage, event.machine, event.kind == "outage_start")
        if event.kind not in ("board_placing", "board_exit"):
            log.info(event.kind.replace("_", " "), equipment=self._machine_ids[event.machine],
                     line_time=round(event.at, 1),
                     **({"serial": event.board.serial, "result": event.board.result} if event.board else {}),
                     **({"code": event.code, "text": event.text} if event.code is not None else {}),
                     **({"state": event.text} if event.kind == "state" else {}))
        if self.on_event is not None:
            self.on_event(event)

    def _test_files(self, serial: str, results: list[str]) -> None:
        """Write the tester's files off the clock loop (file system I/O), in order, one board at a time."""
        station = self.ict
        assert station is not None
        write = functools.partial(station.write_results, serial, datetime.now(UTC), results)
        if self._tg is None:
            write()
        else:
            self._tg.start_soon(self._write_in_order, write)

    async def _write_in_order(self, write: Callable[[], object]) -> None:
        async with self._ict_lock:
            await anyio.to_thread.run_sync(write)

    async def _outage(self, machine: str, starting: bool) -> None:
        if machine == "pick_and_place":
            await (self.pick_and_place.stop() if starting else self.pick_and_place.start())
        elif machine == "reflow_oven":
            await (self.reflow_oven.stop() if starting else self.reflow_oven.start())
        elif machine == "aoi":
            if starting:
                self.aoi.stop()
            elif self._tg is not None:
                await self._tg.start(self.aoi.serve)


def first_os_error(exc: BaseException) -> OSError | None:
    """The OSError (typically: port already in use) inside a task group's exception group, if any."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := first_os_error(inner)) is not None:
                return found
    return None


def with_port_base(config: VirtualLineConfig, port_base: int | None) -> VirtualLineConfig:
    """`--port-base`: None keeps the config's ports, 0 picks free ones, N uses N, N+1, N+2."""
    if port_base is None:
        return config
    return config.with_free_ports() if port_base == 0 else config.with_port_base(port_base)


def quiet_libraries() -> None:
    """The protocol libraries log per request or about endpoints the virtual line does not use."""
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main_simulate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emsedge simulate", description="Run the virtual SMT line.")
    parser.add_argument("-c", "--config", type=Path, default=Path("config/virtual-line.yaml"),
                        help="virtual line config (YAML)")
    parser.add_argument("--port-base", type=int, default=None, metavar="N",
                        help="listen on N (pick-and-place), N+1 (reflow oven), N+2 (AOI) instead of the ports in "
                        "the config; 0: ports the OS picks (logged in `virtual line up`)")
    parser.add_argument("--hold", action="store_true",
                        help="bring the servers up but start the line's clock only on SIGUSR1 (so a gateway can "
                        "connect first and see the first board)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--events", type=Path, default=None,
                        help="append every line event (boards, alarms, states, outages) to this file as JSON lines")
    args = parser.parse_args(argv)
    try:
        config = with_port_base(load_virtual_line(find_file(args.config)), args.port_base)
    except ValueError as exc:
        parser.error(f"--port-base: {exc}")
    except ConfigError as exc:
        print(f"emsedge simulate: configuration invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    from emsedge.config import LoggingConfig  # noqa: PLC0415
    from emsedge.logging import configure_logging  # noqa: PLC0415

    configure_logging(LoggingConfig())
    quiet_libraries()
    events_file: TextIO | None = open(args.events, "a", encoding="utf-8") if args.events else None  # noqa: SIM115

    def record(event: LineEvent) -> None:
        if events_file is not None:
            events_file.write(json.dumps(event_json(event)) + "\n")
            events_file.flush()

    try:
        return anyio.run(_simulate, config, record, args.duration, args.hold)
    except (OSError, BaseExceptionGroup) as exc:
        os_error = first_os_error(exc)
        if os_error is None:
            raise
        print(f"emsedge simulate: cannot start the virtual line: {os_error}", file=sys.stderr)
        return 1
    finally:
        if events_file is not None:
            events_file.close()


async def _simulate(config: VirtualLineConfig, record: Callable[[LineEvent], None], duration: float | None,
                    hold: bool = False) -> int:
    line = VirtualLine(config, on_event=record, hold=hold)
    async with anyio.create_task_group() as tg:
        # Receive signals before the servers come up: a SIGUSR1 sent right after `virtual line up` counts.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
            await tg.start(line.run)
            with anyio.move_on_after(duration):
                async for received in signals:
                    if received != signal.SIGUSR1:
                        break
                    if not line.released:
                        log.info("line clock started")
                    line.release()
        log.info("virtual line stopping")
        tg.cancel_scope.cancel()
    return 0
