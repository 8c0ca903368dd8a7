"""The virtual line's model and fault schedule, without sockets: one clock, one flow of boards."""

from __future__ import annotations

from typing import Any

import pytest

from emsedge.simulate.config import FaultSchedule, VirtualLineConfig
from emsedge.simulate.line import Line, LineEvent
from emsedge.simulate.schedule import Schedule


def _line(**schedule: Any) -> Line:
    return Line(VirtualLineConfig.model_validate({
        "line": {"board_interval": 10, "first_serial": 123, "seed": 1},
        "pick_and_place": {"setup_time": 5, "transfer_time": 1, "placement_time": 9},
        "reflow_oven": {"dwell_time": 60, "min_spacing": 5},
        "aoi": {"inspection_time": 8, "defect_rate": 0.5},
        "schedule": schedule or {"faults": []},
    }))


def _run(line: Line, until: float) -> list[LineEvent]:
    events: list[LineEvent] = []
    t = 0.0
    while t < until:
        t += 1.0
        events += line.advance(t)
    return events


def test_boards_leave_every_machine_in_order_with_serials_like_pcb_2026_000123() -> None:
    line = _line()
    events = _run(line, 300)
    placed = [e.board.serial for e in events if e.kind == "board_placing" and e.board]
    exited = [e.board.serial for e in events if e.kind == "board_exit" and e.board]
    inspected = [e.board.serial for e in events if e.kind == "board_inspected" and e.board]
    assert placed[:3] == ["PCB-2026-000123", "PCB-2026-000124", "PCB-2026-000125"]
    assert exited == placed[: len(exited)]
    assert inspected == exited[: len(inspected)]
    assert len(inspected) >= 20
    board = line.completed[0]
    assert board.placed_at is not None
    assert board.oven_exit is not None
    assert board.inspected_at is not None
    assert board.placed_at < board.oven_exit < board.inspected_at
    assert {b.result for b in line.completed} == {"PASS", "FAIL"}
    assert all(d["refdes"] for b in line.completed if b.result == "FAIL" for d in b.defects)


def test_a_boards_reels_are_the_reels_loaded_when_its_serial_appears() -> None:
    line = _line()
    t, seen = 0.0, 0
    while seen < 30:
        t += 1.0
        for e in line.advance(t):
            if e.kind == "board_placing" and e.board:
                loaded = {slot + 1: reel.reel_id for slot, reel in enumerate(line.pick_and_place.reels)}
                assert {s: m["reel_id"] for s, m in e.board.materials.items()} == loaded
                seen += 1
    assert len({b.materials[7]["reel_id"] for b in line.completed}) >= 1


def test_empty_reels_are_replaced_between_boards() -> None:
    line = Line(VirtualLineConfig.model_validate({
        "line": {"board_interval": 1},
        "pick_and_place": {"setup_time": 0, "transfer_time": 0.5, "placement_time": 0.5,
                           "feeders": [{"part_number": "IC-1", "ref_designators": ["U1", "U2"], "reel_quantity": 6}]},
        "reflow_oven": {"dwell_time": 1, "min_spacing": 0},
        "aoi": {"inspection_time": 0.5},
    }))
    _run(line, 40)
    reels = [b.materials[1]["reel_id"] for b in line.completed]
    assert len(set(reels)) >= 5  # 6 parts per reel, 2 per board and a spare for a failed pick


def test_pick_and_place_states_follow_setup_jam_blocked_and_starved() -> None:
    line = _line(faults=[
        {"at": 40, "machine": "pick_and_place", "fault": "jam", "duration": 20},
        {"at": 100, "machine": "reflow_oven", "fault": "conveyor_stop", "duration": 30},
        {"at": 200, "machine": "line", "fault": "starve", "duration": 80},
    ])
    events = _run(line, 300)
    states = [(round(e.at), e.text) for e in events if e.kind == "state"]
    names = [s for _, s in states]
    assert names[:3] == ["running", "down", "running"]
    assert "blocked" in names
    assert "starved" in names
    assert (40, "down") in states
    alarms = [(e.kind, e.machine, e.code) for e in events if e.kind.startswith("alarm")]
    assert alarms == [
        ("alarm_set", "pick_and_place", 1201), ("alarm_cleared", "pick_and_place", 1201),
        ("alarm_set", "reflow_oven", 2), ("alarm_cleared", "reflow_oven", 2),
    ]


def test_oven_temperatures_follow_setpoints_and_alarm_bits_follow_the_schedule() -> None:
    line = _line(faults=[{"at": 10, "machine": "reflow_oven", "fault": "alarm", "code": 3, "duration": 5}])
    _run(line, 12)
    assert line.oven.alarm_word == 1 << 3
    assert line.oven.o2_ppm > 2000
    _run_from(line, 12, 200)
    assert line.oven.alarm_word == 0
    top, bottom = line.oven.measured()
    for actual, setpoint in zip(top + bottom, line.oven.top_setpoints + line.oven.bottom_setpoints, strict=True):
        assert actual == pytest.approx(setpoint, abs=4.0)


def _run_from(line: Line, start: float, until: float) -> None:
    t = start
    while t < until:
        t += 1.0
        line.advance(t)


def test_outages_are_announced_once_each_way() -> None:
    line = _line(faults=[{"at": 5, "machine": "aoi", "fault": "outage", "duration": 3}])
    events = [(e.kind, e.machine, e.at) for e in _run(line, 20) if e.kind.startswith("outage")]
    assert events == [("outage_start", "aoi", 5.0), ("outage_end", "aoi", 8.0)]


def test_schedule_repeats_and_refuses_faults_a_machine_cannot_have() -> None:
    schedule = Schedule(FaultSchedule.model_validate(
        {"repeat_every": 100, "faults": [{"at": 10, "machine": "aoi", "fault": "alarm", "duration": 5}]}))
    assert Schedule.has(schedule.active(112), "aoi", "alarm")
    assert not schedule.active(116)
    first, second = next(iter(schedule.active(11))), next(iter(schedule.active(111)))
    assert first != second  # each repetition is a new occurrence
    with pytest.raises(ValueError, match="cannot have fault 'jam'"):
        FaultSchedule.model_validate({"faults": [{"at": 1, "machine": "aoi", "fault": "jam", "duration": 1}]})
