"""The reference MES subscriber (examples/mes_subscriber.py) on crafted messages: dedup, gaps, joins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))
from mes_subscriber import MesSubscriber  # noqa: E402

PREFIX = "ems/p/smt/l"


def _msg(seq: int, equipment: str, event: dict[str, Any] | None = None, *, message_id: str | None = None,
         readings: list[dict[str, Any]] | None = None) -> tuple[str, bytes]:
    body: dict[str, Any] = {"schema": "emsedge/event@2", "id": message_id or f"id-{seq}", "seq": seq,
                            "gateway": "gw", "equipment": equipment, "equipment_type": "x",
                            "ts": f"2026-11-24T10:00:{seq:02d}.000Z"}
    if event is not None:
        body["event"] = event
        topic = f"{PREFIX}/{equipment}/events"
    else:
        body["readings"] = readings or []
        topic = f"{PREFIX}/{equipment}/telemetry"
    return topic, json.dumps(body).encode()


def test_repeated_ids_are_dropped_and_missing_seqs_are_reported_even_out_of_order() -> None:
    sub = MesSubscriber()
    for seq in (5, 6, 8, 6, 10, 9):
        sub.handle(*_msg(seq, "reflow-1", readings=[{"signal": "t", "value": seq}]))
    assert sub.duplicates == 1
    assert sub.received == 5
    assert sub.gaps() == {"gw": [7]}
    sub.handle(*_msg(7, "reflow-1", readings=[]))
    assert sub.gaps() == {}
    assert sub.latest["reflow-1"]["t"]["value"] == 9


def test_a_re_emitted_copy_with_the_same_id_and_a_new_seq_is_a_duplicate_and_no_gap() -> None:
    """The contract: duplicates by `id` are possible (a result file re-emitted after a crash), gaps by `seq`
    are not, so the copy's seq counts as received although the copy itself is dropped."""
    sub = MesSubscriber()
    sub.handle(*_msg(1, "ict-1", _tested("PCB-1", "fail", "s1"), message_id="result-1"))
    sub.handle(*_msg(2, "ict-1", {"type": "connection_restored"}))
    sub.handle(*_msg(3, "ict-1", _tested("PCB-1", "fail", "s1"), message_id="result-1"))
    sub.handle(*_msg(4, "ict-1", {"type": "connection_restored"}))
    assert sub.duplicates == 1 and sub.received == 3
    assert sub.gaps() == {}
    assert [r["result"] for r in sub.boards["PCB-1"]["test"]["runs"]] == ["fail"]


def test_a_board_record_joins_placement_reflow_and_inspection_by_serial() -> None:
    done: list[dict[str, Any]] = []
    sub = MesSubscriber(on_board=done.append)
    sub.handle(*_msg(1, "pnp-1", {"type": "materials_installed", "serial": "PCB-1", "values": {
        "program": {"value": "P1", "unit": None},
        "feeder_2_reel_id": {"value": "REEL-2", "unit": None},
        "feeder_2_part_number": {"value": "CAP", "unit": None},
        "feeder_1_reel_id": {"value": "REEL-1", "unit": None},
        "feeder_1_ref_designators": {"value": ["R1", "R2"], "unit": None},
    }}))
    sub.handle(*_msg(2, "reflow-1", {"type": "unit_processed", "serial": "PCB-1", "process": "reflow",
                                     "values": {"zone1_top_actual": {"value": 150.5, "unit": "Cel"}}}))
    assert done == []
    sub.handle(*_msg(3, "aoi-1", {"type": "unit_inspected", "serial": "PCB-1", "result": "fail",
                                  "defects": ["C12:tombstone", ["R3", "missing"]]}))
    (board,) = done
    assert board["placement"]["program"] == "P1"
    assert board["placement"]["materials"] == [
        {"slot": 1, "reel_id": "REEL-1", "ref_designators": ["R1", "R2"]},
        {"slot": 2, "reel_id": "REEL-2", "part_number": "CAP"},
    ]
    assert board["reflow"]["profile"] == {"zone1_top_actual": 150.5}
    assert board["reflow"]["units"] == {"zone1_top_actual": "Cel"}
    assert board["reflow"]["process"] == "reflow"
    assert board["inspection"]["defects"] == [{"refdes": "C12", "code": "tombstone"},
                                              {"refdes": "R3", "code": "missing"}]
    assert sub.completed == ["PCB-1"]


def test_faults_are_active_until_cleared_by_occurrence_id_and_states_are_kept() -> None:
    sub = MesSubscriber()
    sub.handle(*_msg(1, "pnp-1", {"type": "fault_occurred", "fault_occurrence_id": "f1", "fault_code": 1201}))
    sub.handle(*_msg(2, "pnp-1", {"type": "station_state_changed", "state": 5000,
                                  "state_name": "unscheduled_down"}))
    assert list(sub.active_faults) == ["f1"]
    sub.handle(*_msg(3, "pnp-1", {"type": "fault_cleared", "fault_occurrence_id": "f1", "fault_code": 1201}))
    assert sub.active_faults == {}
    assert sub.states["pnp-1"]["state_name"] == "unscheduled_down"
    sub.handle(f"{PREFIX}/_gateway/status", b'{"gateway": "gw", "state": "online"}')
    sub.handle(f"{PREFIX}/x/events", b"not json")
    assert sub.status["gw"]["state"] == "online"
    assert sub.invalid == 1


def test_boards_still_incomplete_after_the_timeout_are_reported_once_with_the_missed_units_announcement() -> None:
    now = [100.0]
    sub = MesSubscriber(incomplete_after=30.0, clock=lambda: now[0])
    sub.handle(*_msg(1, "pnp-1", {"type": "materials_installed", "serial": "PCB-1", "values": {}}))
    sub.handle(*_msg(2, "pnp-1", {"type": "materials_installed", "serial": "PCB-2", "values": {}}))
    sub.handle(*_msg(3, "reflow-1", {"type": "unit_processed", "serial": "PCB-2", "values": {}}))
    sub.handle(*_msg(4, "reflow-1", {"type": "units_missed", "count": 1, "trigger": "board_exit_serial",
                                     "emit": "unit_processed", "counter": "board_exit_count", "counter_from": 1,
                                     "counter_to": 3, "last_serial": None, "next_serial": "PCB-2"}))
    sub.handle(*_msg(5, "aoi-1", {"type": "unit_inspected", "serial": "PCB-1", "result": "pass", "defects": []}))
    sub.handle(*_msg(6, "aoi-1", {"type": "unit_inspected", "serial": "PCB-2", "result": "pass", "defects": []}))
    now[0] = 129.0
    assert sub.check_incomplete() == []  # not yet: the timeout counts from the board's first event
    now[0] = 131.0
    (report,) = sub.check_incomplete()
    assert report["serial"] == "PCB-1"
    assert report["missing"] == ["reflow"]
    assert report["seen"] == {"placement": "pnp-1", "inspection": "aoi-1"}
    assert [(m["equipment"], m["count"]) for m in report["units_missed"]] == [("reflow-1", 1)]
    assert sub.check_incomplete() == []  # reported once
    assert sub.completed == ["PCB-2"]
    assert sub.summary()["incomplete_boards"] == ["PCB-1"]
    assert sub.summary()["units_missed"] == 1


def test_gaps_covered_by_a_buffer_dropped_announcement_are_explained_the_rest_are_not() -> None:
    sub = MesSubscriber()
    for seq in (1, 2, 7, 9, 10):
        sub.handle(*_msg(seq, "reflow-1", readings=[]))
    assert sub.gaps() == {"gw": [3, 4, 5, 6, 8]}
    sub.handle(*_msg(11, "_gateway", {
        "type": "buffer_dropped", "count": 4, "by_equipment": {"reflow-1": 4}, "reason": "max_bytes",
        "by_reason": {"max_bytes": 4}, "dropped_seqs": [[3, 6]], "dropped_total": 4,
        "dropped_total_by_equipment": {"reflow-1": 4},
    }))
    assert sub.explained_gaps() == {"gw": [3, 4, 5, 6]}  # gap explained by eviction
    assert sub.gaps() == {"gw": [8]}  # unexplained: lost outside the gateway
    summary = sub.summary()
    assert summary["gaps_explained_by_loss"] == {"gw": 4}
    assert summary["dropped_total"] == {"gw": 4}
    assert summary["loss_reasons"] == {"gw": {"max_bytes": 4}}


def _tested(serial: str, result: str, sha: str, failed: list[str] | None = None) -> dict[str, Any]:
    return {"type": "unit_tested", "serial": serial, "result": result, "test_method": "ict",
            "failed_tests": failed or [], "started": "2026-11-24T09:59:00.000Z", "ended": "2026-11-24T09:59:31.000Z",
            "tests": [{"name": "1%r101", "result": result, "measurements": [{"name": "1%r101", "value": 1.0}]},
                      {"name": "1%c12", "result": "pass", "measurements": [{"name": "1%c12", "value": 2.0}]}],
            "source": {"file": f"{sha}.log", "sha256": sha, "board_index": 0}}


def test_test_runs_join_the_board_record_in_order_and_a_resent_result_is_recognised_by_its_source() -> None:
    done: list[dict[str, Any]] = []
    sub = MesSubscriber(on_board=done.append)
    sub.handle(*_msg(1, "ict-1", _tested("PCB-0", "pass", "s0")))  # a tester is on the line from now on
    sub.handle(*_msg(2, "pnp-1", {"type": "materials_installed", "serial": "PCB-1", "values": {}}))
    sub.handle(*_msg(3, "reflow-1", {"type": "unit_processed", "serial": "PCB-1", "values": {}}))
    sub.handle(*_msg(4, "aoi-1", {"type": "unit_inspected", "serial": "PCB-1", "result": "pass"}))
    assert done == []  # complete only with its test
    sub.handle(*_msg(5, "ict-1", _tested("PCB-1", "fail", "s1", ["1%r101"])))
    sub.handle(*_msg(6, "ict-1", _tested("PCB-1", "fail", "s1", ["1%r101"])))  # re-sent after a crash: new id
    sub.handle(*_msg(7, "ict-1", _tested("PCB-1", "pass", "s2")))  # the retest
    (board,) = done
    assert board["serial"] == "PCB-1"
    test = sub.boards["PCB-1"]["test"]
    assert [r["result"] for r in test["runs"]] == ["fail", "pass"]
    assert test["result"] == "pass" and test["runs"][0]["failed_tests"] == ["1%r101"]
    assert test["measurements"] == 2 and test["equipment"] == "ict-1"
    assert sub.duplicates == 1 and sub.tested_serials() == ["PCB-0", "PCB-1"]


def test_the_demo_view_shows_each_boards_test_runs_beside_placement_reflow_and_inspection() -> None:
    from emsedge.demo import MesView  # noqa: PLC0415

    view = MesView()
    view.handle(*_msg(1, "reflow-1", {"type": "unit_processed", "serial": "PCB-1", "values": {}}))
    view.handle(*_msg(2, "aoi-1", {"type": "unit_inspected", "serial": "PCB-1", "result": "pass"}))
    view.handle(*_msg(3, "ict-1", _tested("PCB-1", "fail", "s1", ["1%r101"])))
    view.handle(*_msg(4, "ict-1", _tested("PCB-1", "pass", "s2")))
    lines = view.render("demo", 160)
    header = next(line for line in lines if line.startswith("BOARD"))
    assert "INSPECTION" in header and "TEST" in header
    row = next(line for line in lines if line.startswith("PCB-1"))
    assert "PASS" in row and row.rstrip().endswith("FAIL 1%r101 > PASS")


def test_compact_telemetry_is_expanded_with_the_retained_meta_and_held_until_the_meta_arrives() -> None:
    from mes_subscriber import expand_compact  # noqa: PLC0415

    from emsedge import contract, schema  # noqa: PLC0415

    examples = contract.examples()
    full, compact = examples["telemetry"]
    meta = examples["meta"][0]
    assert expand_compact(compact, meta) == schema.expand_compact(compact, meta) == full
    sub = MesSubscriber()
    sub.handle(f"{PREFIX}/reflow-1/telemetry", json.dumps(compact).encode())  # before its meta: held
    assert "reflow-1" not in sub.latest and sub.received == 1
    sub.handle(f"{PREFIX}/reflow-1/meta", json.dumps(meta).encode())
    assert sub.latest["reflow-1"]["zone1_top_actual"] == {
        "value": 218.4, "unit": "Cel", "quality": "good", "ts": full["ts"]}
    assert sub.latest["reflow-1"]["board_count"]["quality"] == "bad"
    later = {**compact, "id": "id-later", "seq": compact["seq"] + 1, "v": {**compact["v"], "conveyor_speed": 80.0}}
    sub.handle(f"{PREFIX}/reflow-1/telemetry", json.dumps(later).encode())
    assert sub.latest["reflow-1"]["conveyor_speed"] == {
        "value": 80.0, "unit": "cm/min", "quality": "good", "ts": full["ts"]}
    sub.handle(f"{PREFIX}/reflow-1/meta", b"")  # the machine left the config
    assert "reflow-1" not in sub.metas and sub.invalid == 0 and sub.gaps() == {}
