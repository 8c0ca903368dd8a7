"""The virtual line's model: one clock and one flow of boards through placement, reflow and inspection.

The model is plain Python with no I/O, advanced by `Line.advance(now)` to a line time; the protocol
servers (OPC UA, Modbus, HSMS) only read its state and drain its events. That keeps every machine on the
same clock and the same boards, and makes the line testable without sockets.

Flow: a loader brings a board every `board_interval` into the pick-and-place input buffer. The
pick-and-place transfers it in, checks its reels (an empty reel is replaced before the board starts),
shows its serial, places every component (occasionally a pick fails and is retried), and hands it to the
oven when the oven accepts a board (spacing, conveyor running), otherwise it is `blocked`. The oven carries
boards through 10 zones in `dwell_time`; a board leaving updates the board-exit serial and counter. The AOI
inspects boards in order and reports each with a result and a defect list.

Invariants:
* serials are unique and strictly increasing along the line; boards leave each machine in order;
* a board's reels are fixed before its serial is shown, and reels change only between boards, so the
  reels a MES sees with a serial are the reels used for it;
* every state change, alarm and outage of the fault schedule is reported once as a `LineEvent`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from emsedge.simulate.config import VirtualLineConfig
from emsedge.simulate.schedule import Occurrence, Schedule

STEP = 0.25
"""Largest line-time step of the model; a longer advance is split so no board skips a phase."""

PNP_ALARMS = {"jam": (1201, "Feeder jam at slot 3: placement stopped")}
OVEN_ALARM_TEXT = {
    0: "Zone over temperature",
    1: "Zone temperature deviation",
    2: "Conveyor stopped",
    3: "O2 concentration high",
    4: "Exhaust flow low",
    5: "Board jam in oven",
    6: "Circulation fan failure",
    7: "Emergency stop",
}
AOI_ALARM_TEXT = {
    7: "Camera light level low",
    8: "Conveyor width mismatch",
    9: "Barcode unreadable",
}
DIP_RECOVERY = 8.0
"""Line seconds in which a zone controller makes up most of a board's load dip (time constant)."""
IDLE_AFTER = 60.0
"""Line seconds without a board before the AOI reports its process state IDLE (no flapping between boards)."""
DEFECT_CODES = ["tombstone", "bridging", "missing", "insufficient_solder", "polarity", "shifted"]


@dataclass
class Board:
    serial: str
    arrived: float
    materials: dict[int, dict[str, Any]] = field(default_factory=dict)
    placed_at: float | None = None
    oven_entry: float | None = None
    oven_progress: float = 0.0
    oven_exit: float | None = None
    inspected_at: float | None = None
    result: str | None = None
    defects: list[dict[str, str]] = field(default_factory=list)
    tested_at: float | None = None
    test_results: list[str] = field(default_factory=list)
    """ICT verdicts in test order: ["PASS"], ["FAIL"], or ["FAIL", "PASS"] for a retest."""

    def summary(self) -> dict[str, Any]:
        """The ground truth of this board, as a test compares it with what MES received."""
        return {
            "serial": self.serial,
            "materials": {str(k): v for k, v in self.materials.items()},
            "placed_at": self.placed_at,
            "oven_exit": self.oven_exit,
            "result": self.result,
            "defects": self.defects,
            **({"test_results": self.test_results} if self.test_results else {}),
        }


@dataclass(frozen=True)
class LineEvent:
    """Something the protocol servers must announce (or the runner must do) at line time `at`."""

    at: float
    kind: str
    """board_placing | board_exit | board_inspected | board_tested | alarm_set | alarm_cleared | outage_start |
    outage_end | state"""
    machine: str
    board: Board | None = None
    code: int | None = None
    text: str | None = None


@dataclass
class Reel:
    reel_id: str
    part_number: str
    remaining: int


class PickAndPlace:
    def __init__(self, line: Line) -> None:
        cfg = line.config.pick_and_place
        self.line = line
        self.cfg = cfg
        self.program = cfg.program
        self.phase = "setup"  # setup | waiting | transfer_in | placing | done
        self.phase_left = cfg.setup_time
        self.board: Board | None = None
        self.board_serial = ""
        self.placed_components = 0
        self.pick_errors = 0
        self.boards_completed = 0
        self.last_cycle_time = 0.0
        self.head_vacuum = -82.0
        self.nozzles = list(cfg.nozzles)
        self.components_per_board = sum(len(f.ref_designators) for f in cfg.feeders)
        self.placed_on_board = 0
        self.cycle_started = 0.0
        self.alarm: tuple[int, str] | None = None
        self.reels: list[Reel] = [
            Reel(
                line.new_reel_id(),
                f.part_number,
                line.rng.randint(len(f.ref_designators) * 2, f.reel_quantity),
            )
            for f in cfg.feeders
        ]
        self.state = "setup"

    def compute_state(self, active: frozenset[Occurrence]) -> str:
        if Schedule.has(active, "pick_and_place", "jam"):
            return "down"
        if Schedule.has(active, "pick_and_place", "pause"):
            return "idle"
        if self.phase == "setup":
            return "setup"
        if self.phase in ("transfer_in", "placing"):
            return "running"
        if self.phase == "done":
            return "blocked"
        return "starved"

    def step(self, now: float, dt: float, active: frozenset[Occurrence]) -> None:
        if Schedule.has(active, "pick_and_place", "jam") or Schedule.has(active, "pick_and_place", "pause"):
            self.head_vacuum = -2.0 if Schedule.has(active, "pick_and_place", "jam") else self.head_vacuum
            return
        self.head_vacuum += (-82.0 - self.head_vacuum) * min(1.0, dt / 2.0)
        if self.phase == "setup":
            self.phase_left -= dt
            if self.phase_left <= 0:
                self.phase = "waiting"
        self._take_board(now)
        if self.phase == "transfer_in":
            self.phase_left -= dt
            if self.phase_left <= 0:
                assert self.board is not None
                self.phase, self.phase_left = "placing", self.cfg.placement_time
                self.placed_on_board = 0
                self.board_serial = self.board.serial
                self.line.emit(LineEvent(now, "board_placing", "pick_and_place", board=self.board))
        if self.phase == "placing":
            self._place(dt, active)
            self.phase_left -= dt
            if self.phase_left <= 0:
                self._place_rest()
                assert self.board is not None
                self.board.placed_at = now
                self.boards_completed += 1
                self.last_cycle_time = round(now - self.cycle_started, 3)
                self.phase = "done"
        if self.phase == "done" and self.board is not None and self.line.oven.accepts(now, active):
            self.line.oven.enter(self.board, now)
            self.board = None
            self.phase = "waiting"
            self._take_board(now)

    def _take_board(self, now: float) -> None:
        if self.phase == "waiting" and self.line.input_queue:
            board = self.line.input_queue.pop(0)
            self._load_reels(board)
            self.board = board
            self.phase, self.phase_left = "transfer_in", self.cfg.transfer_time
            self.cycle_started = now

    def _load_reels(self, board: Board) -> None:
        for slot, feeder in enumerate(self.cfg.feeders, start=1):
            reel = self.reels[slot - 1]
            if reel.remaining < len(feeder.ref_designators) * 2:  # spare for failed picks
                reel = Reel(self.line.new_reel_id(), feeder.part_number, feeder.reel_quantity)
                self.reels[slot - 1] = reel
            board.materials[slot] = {
                "reel_id": reel.reel_id,
                "part_number": reel.part_number,
                "ref_designators": list(feeder.ref_designators),
            }

    def _place(self, dt: float, active: frozenset[Occurrence]) -> None:
        target = self.components_per_board * min(1.0, 1 - (self.phase_left - dt) / self.cfg.placement_time)
        burst = Schedule.has(active, "pick_and_place", "pick_errors")
        rate = 0.25 if burst else self.cfg.pick_error_rate
        while self.placed_on_board < int(target):
            if self.line.rng.random() < rate:
                self.pick_errors += 1
                self.head_vacuum = -55.0 - self.line.rng.random() * 10
                self._consume(self.placed_on_board)
            self._consume(self.placed_on_board)
            self.placed_on_board += 1
            self.placed_components += 1

    def _place_rest(self) -> None:
        while self.placed_on_board < self.components_per_board:
            self._consume(self.placed_on_board)
            self.placed_on_board += 1
            self.placed_components += 1

    def _consume(self, index: int) -> None:
        for feeder, reel in zip(self.cfg.feeders, self.reels, strict=True):
            if index < len(feeder.ref_designators):
                reel.remaining = max(0, reel.remaining - 1)
                return
            index -= len(feeder.ref_designators)


class ReflowOven:
    def __init__(self, line: Line) -> None:
        cfg = line.config.reflow_oven
        self.line = line
        self.cfg = cfg
        self.top_setpoints = list(cfg.top_setpoints)
        self.bottom_setpoints = list(cfg.bottom_setpoints)
        self.top_actual = [sp + line.rng.gauss(0, 1.0) for sp in self.top_setpoints]
        self.bottom_actual = [sp + line.rng.gauss(0, 1.0) for sp in self.bottom_setpoints]
        # Load dips: a board entering a zone cools it; the zone controller recovers within seconds.
        self.top_dip = [0.0] * 10
        self.bottom_dip = [0.0] * 10
        self.boards: list[Board] = []
        self.last_entry = -math.inf
        self.exit_serial = ""
        self.exit_count = 0
        self.alarm_word = 0
        self.conveyor_speed = cfg.conveyor_speed
        self.o2_ppm = cfg.o2_ppm
        self.state = 3  # 0 off, 1 heating, 2 running, 3 standby (no boards), 4 alarm stop

    def accepts(self, now: float, active: frozenset[Occurrence]) -> bool:
        stopped = Schedule.has(active, "reflow_oven", "conveyor_stop")
        return not stopped and now - self.last_entry >= self.cfg.min_spacing

    def enter(self, board: Board, now: float) -> None:
        board.oven_entry = now
        self.last_entry = now
        self.boards.append(board)

    def step(self, now: float, dt: float, active: frozenset[Occurrence]) -> None:
        rng = self.line.rng
        stopped = Schedule.has(active, "reflow_oven", "conveyor_stop")
        word = 0
        for occ in Schedule.of(active, "reflow_oven", "alarm"):
            word |= 1 << (occ.code if occ.code is not None else 0)
        if stopped:
            word |= 1 << 2
        self.alarm_word = word
        o2_high = bool(word & (1 << 3))
        self.o2_ppm = max(0.0, (self.cfg.o2_ppm * (3.0 if o2_high else 1.0)) + rng.gauss(0, 15))
        self.conveyor_speed = 0.0 if stopped else self.cfg.conveyor_speed
        k = 1 - math.exp(-dt / self.cfg.time_constant)
        recover = math.exp(-dt / DIP_RECOVERY)
        for z in range(10):
            self.top_actual[z] += (self.top_setpoints[z] - self.top_actual[z]) * k
            self.bottom_actual[z] += (self.bottom_setpoints[z] - self.bottom_actual[z]) * k
            self.top_dip[z] *= recover
            self.bottom_dip[z] *= recover
        if not stopped:
            for board in list(self.boards):
                before = int(board.oven_progress * 10)
                board.oven_progress += dt / self.cfg.dwell_time
                zone = int(board.oven_progress * 10)
                if zone != before and zone < 10:
                    self.top_dip[zone] += self.cfg.board_load
                    self.bottom_dip[zone] += self.cfg.board_load
                if board.oven_progress >= 1.0:
                    self.boards.remove(board)
                    board.oven_exit = now
                    self.exit_serial = board.serial
                    self.exit_count += 1
                    self.line.aoi.queue.append(board)
                    self.line.emit(LineEvent(now, "board_exit", "reflow_oven", board=board))
        self.state = 4 if stopped else (2 if self.boards else 3)

    def measured(self) -> tuple[list[float], list[float]]:
        """Actual temperatures as the thermocouples read them (with noise)."""
        rng = self.line.rng
        n = self.cfg.noise
        return (
            [round(t - d + rng.gauss(0, n), 2) for t, d in zip(self.top_actual, self.top_dip, strict=True)],
            [round(t - d + rng.gauss(0, n), 2) for t, d in zip(self.bottom_actual, self.bottom_dip, strict=True)],
        )


class Aoi:
    def __init__(self, line: Line) -> None:
        self.line = line
        self.cfg = line.config.aoi
        self.queue: list[Board] = []
        self.board: Board | None = None
        self.left = 0.0
        self.inspected = 0
        self.failed = 0
        self.state = "IDLE"  # IDLE | INSPECTING
        self.program = self.cfg.program
        self.light_level = 97.0
        self.last_busy = -math.inf
        self.process_state = "IDLE"  # GEM-like: EXECUTING while boards come, IDLE after a minute without

    def step(self, now: float, dt: float, active: frozenset[Occurrence]) -> None:
        low = any(o.code in (None, 7) for o in Schedule.of(active, "aoi", "alarm"))
        self.light_level = 62.0 if low else 97.0
        if self.board is None and self.queue:
            self.board = self.queue.pop(0)
            self.left = self.cfg.inspection_time
        if self.board is None:
            self.state = "IDLE"
            if now - self.last_busy >= IDLE_AFTER:
                self.process_state = "IDLE"
            return
        self.state = "INSPECTING"
        self.process_state = "EXECUTING"
        self.last_busy = now
        self.left -= dt
        if self.left > 0:
            return
        board, self.board = self.board, None
        rng = self.line.rng
        forced = Schedule.has(active, "aoi", "defects")
        if forced or rng.random() < self.cfg.defect_rate:
            refs = [r for m in board.materials.values() for r in m["ref_designators"]]
            board.defects = [
                {"refdes": rng.choice(refs), "code": rng.choice(DEFECT_CODES)} for _ in range(rng.randint(1, 3))
            ]
            board.result = "FAIL"
            self.failed += 1
        else:
            board.result = "PASS"
        board.inspected_at = now
        self.inspected += 1
        self.line.completed.append(board)
        self.line.emit(LineEvent(now, "board_inspected", "aoi", board=board))
        if self.line.config.ict.enabled:
            self.line.ict.queue.append(board)


class Ict:
    """In-circuit test after the AOI: decides each board's verdict (the station writes the files)."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.cfg = line.config.ict
        self.queue: list[Board] = []
        self.board: Board | None = None
        self.left = 0.0
        self.tested = 0
        self.rng = random.Random(line.config.line.seed + 3070)  # its own stream: the AOI's stays as it was

    def step(self, now: float, dt: float, active: frozenset[Occurrence]) -> None:
        if self.board is None and self.queue:
            self.board = self.queue.pop(0)
            self.left = self.cfg.test_time
        if self.board is None:
            return
        self.left -= dt
        if self.left > 0:
            return
        board, self.board = self.board, None
        if self.rng.random() < self.cfg.fail_rate:
            board.test_results = ["FAIL", "PASS"] if self.rng.random() < self.cfg.retest_rate else ["FAIL"]
        else:
            board.test_results = ["PASS"]
        board.tested_at = now
        self.tested += 1
        self.line.emit(LineEvent(now, "board_tested", "ict", board=board))


class Line:
    """The whole line on one clock. `advance(now)` moves it to line time `now` and returns the events."""

    def __init__(self, config: VirtualLineConfig) -> None:
        self.config = config
        self.rng = random.Random(config.line.seed)
        self.schedule = Schedule(config.schedule)
        self.now = 0.0
        self._reel_counter = 100400 + self.rng.randint(0, 99) * 10
        self._serial_counter = config.line.first_serial
        self.next_arrival = 0.0
        self.loaded = 0
        self.input_queue: list[Board] = []
        self.completed: list[Board] = []
        self._events: list[LineEvent] = []
        self.active: frozenset[Occurrence] = frozenset()
        self.pick_and_place = PickAndPlace(self)
        self.oven = ReflowOven(self)
        self.aoi = Aoi(self)
        self.ict = Ict(self)

    def new_reel_id(self) -> str:
        self._reel_counter += 1
        return f"REEL-{self._reel_counter:06d}"

    def emit(self, event: LineEvent) -> None:
        self._events.append(event)

    def advance(self, now: float) -> list[LineEvent]:
        while self.now < now:
            dt = min(STEP, now - self.now)
            self._step(self.now + dt, dt)
        events, self._events = self._events, []
        return events

    def _step(self, now: float, dt: float) -> None:
        self.now = now
        active = self.schedule.active(now)
        self._faults(now, self.active, active)
        self.active = active
        cfg = self.config.line
        starving = Schedule.has(active, "line", "starve")
        more = cfg.max_boards is None or self.loaded < cfg.max_boards
        if now >= self.next_arrival and not starving and more and len(self.input_queue) < cfg.input_buffer:
            serial = f"{cfg.serial_prefix}{self._serial_counter:06d}"
            self._serial_counter += 1
            self.loaded += 1
            self.input_queue.append(Board(serial, now))
            self.next_arrival = max(self.next_arrival + cfg.board_interval, now)
        # Downstream first, so a board moves at most one machine per step.
        self.ict.step(now, dt, active)
        self.aoi.step(now, dt, active)
        self.oven.step(now, dt, active)
        self.pick_and_place.step(now, dt, active)
        state = self.pick_and_place.compute_state(active)
        if state != self.pick_and_place.state:
            self.pick_and_place.state = state
            self.emit(LineEvent(now, "state", "pick_and_place", text=state))

    def _faults(self, now: float, before: frozenset[Occurrence], after: frozenset[Occurrence]) -> None:
        for occ in sorted(after - before, key=lambda o: (o.start, o.index)):
            self._fault_edge(now, occ, started=True)
        for occ in sorted(before - after, key=lambda o: (o.start, o.index)):
            self._fault_edge(now, occ, started=False)

    def _fault_edge(self, now: float, occ: Occurrence, *, started: bool) -> None:
        if occ.fault == "outage":
            self.emit(LineEvent(now, "outage_start" if started else "outage_end", occ.machine))
            return
        code: int | None = None
        text: str | None = None
        if occ.machine == "pick_and_place" and occ.fault == "jam":
            code, text = PNP_ALARMS["jam"]
        elif occ.machine == "reflow_oven" and occ.fault in ("alarm", "conveyor_stop"):
            code = 2 if occ.fault == "conveyor_stop" else (occ.code or 0)
            text = OVEN_ALARM_TEXT.get(code, f"Alarm bit {code}")
        elif occ.machine == "aoi" and occ.fault == "alarm":
            code = occ.code if occ.code is not None else 7
            text = AOI_ALARM_TEXT.get(code, f"Alarm {code}")
        if code is None:
            return
        if occ.machine == "pick_and_place":
            self.pick_and_place.alarm = (code, text or "") if started else None
        self.emit(LineEvent(now, "alarm_set" if started else "alarm_cleared", occ.machine, code=code, text=text))
