from __future__ import annotations

import copy
from typing import Any

from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.normalise import Normaliser
from emsedge.schema import reading, telemetry


def _oven(**extra: Any) -> ModbusEquipment:
    return ModbusEquipment.model_validate({
        "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "127.0.0.1"},
        "signals": [
            {"name": "state", "table": "holding", "address": 0, "event": "station_state",
             "map": {1: 1100, 2: 2000, 3: 5000}},
            {"name": "zone1", "table": "holding", "address": 1, "unit": "Cel"},
        ],
        **extra,
    })


def _cycle(state: Any, zone1: float = 200.0, quality: str = "good") -> Any:
    ts = "2026-11-24T10:00:00.000Z"
    return telemetry("reflow-1", "reflow_oven", [
        reading("state", state, quality=quality, ts=ts), reading("zone1", zone1, unit="Cel", ts=ts),
    ], ts)


def test_state_signal_leaves_telemetry_and_becomes_an_event_on_change() -> None:
    n = Normaliser(_oven())
    first = n.process([_cycle(1)])
    assert [r.kind for r in first] == ["telemetry", "event"]
    assert [x["signal"] for x in first[0].body["readings"]] == ["zone1"]
    ev = first[1].body["event"]
    assert ev["type"] == "station_state_changed"
    assert ev["state"] == 1100 and ev["state_name"] == "productive" and "old_state" not in ev

    assert [r.kind for r in n.process([_cycle(1)])] == ["telemetry"]  # unchanged: no event

    down = n.process([_cycle(3)])[1].body["event"]
    assert down["state"] == 5000 and down["state_name"] == "unscheduled_down"
    assert down["old_state"] == 1100 and down["old_state_duration_s"] >= 0


def test_bad_quality_state_reading_fires_no_event() -> None:
    n = Normaliser(_oven())
    n.process([_cycle(1)])
    assert [r.kind for r in n.process([_cycle(None, quality="bad")])] == ["telemetry"]


def test_unmapped_state_value_is_reported_as_unknown_once_per_change() -> None:
    n = Normaliser(_oven())
    ev = n.process([_cycle(9)])[1].body["event"]
    assert ev["state"] is None and ev["state_name"] == "unknown" and ev["raw_value"] == 9


def test_records_without_state_signals_pass_through_untouched() -> None:
    eq = ModbusEquipment.model_validate({
        "id": "r", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "h"},
        "signals": [{"name": "zone1", "table": "holding", "address": 1}],
    })
    rec = telemetry("r", "reflow_oven", [reading("zone1", 1, ts="t")], "t")
    assert Normaliser(eq).process([rec]) == [rec]


def test_the_records_given_are_never_modified_and_triggers_see_the_state_readings() -> None:
    n = Normaliser(_oven(triggers=[{"on_change": "zone1", "emit": "unit_processed", "include": ["state"]}]))
    n.process([_cycle(1, zone1=200.0)])
    given = [_cycle(3, zone1=201.0)]
    out = n.process(given)
    assert [r["signal"] for r in given[0].body["readings"]] == ["state", "zone1"]
    assert [r["signal"] for r in out[0].body["readings"]] == ["zone1"]
    assert out[-1].body["event"]["values"] == {"state": {"value": 3, "unit": None}}


def test_with_report_by_exception_the_records_given_stay_as_they_were_and_only_changes_go_out() -> None:
    n = Normaliser(_oven(publish="on_change", precision=1, snapshot_interval="1h",
                         triggers=[{"on_change": "zone1", "emit": "unit_processed", "include": ["state"]}]))
    first = [_cycle(1, zone1=200.04)]
    before = copy.deepcopy(first)
    out = n.process(first)
    assert first == before
    assert [r["value"] for r in out[0].body["readings"]] == [200.0]  # the snapshot, rounded; state left it
    given = [_cycle(1, zone1=201.26)]
    before = copy.deepcopy(given)
    out = n.process(given)
    assert given == before  # not rounded, state reading still there
    assert [(r["signal"], r["value"]) for r in out[0].body["readings"]] == [("zone1", 201.3)]
    assert out[-1].body["event"]["values"] == {"state": {"value": 1, "unit": None}}  # the trigger saw the raw input
    unchanged = [_cycle(1, zone1=201.26)]
    assert [r.kind for r in n.process(unchanged)] == []  # no change, no telemetry, no trigger
