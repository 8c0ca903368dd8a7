from __future__ import annotations

from typing import Any

from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.schema import Quality, Record, event, reading, telemetry
from emsedge.triggers import TriggerEngine


def _oven(*, extra_signals: tuple[dict[str, Any], ...] = (), **trigger: Any) -> ModbusEquipment:
    spec = {
        "on_change": "board_exit_serial",
        "emit": "unit_processed",
        "serial": "board_exit_serial",
        "include": ["zone1_top_actual", "conveyor_speed"],
    }
    spec.update(trigger)
    return ModbusEquipment.model_validate(
        {
            "id": "reflow-1",
            "type": "reflow_oven",
            "adapter": "modbus",
            "connection": {"host": "127.0.0.1"},
            "signals": [
                {"name": "board_exit_serial", "table": "holding", "address": 0, "type": "string", "length": 8},
                {"name": "zone1_top_actual", "table": "holding", "address": 10, "type": "float32", "unit": "Cel"},
                {"name": "conveyor_speed", "table": "holding", "address": 12, "unit": "cm/min"},
                *extra_signals,
            ],
            "triggers": [spec],
        }
    )


def _poll(serial: Any, temp: float = 245.0, speed: int = 80, *, quality: str = Quality.GOOD,
          ts: str = "2026-11-24T20:00:00.000Z") -> Record:
    return telemetry(
        "reflow-1",
        "reflow_oven",
        [
            reading("board_exit_serial", serial if quality == Quality.GOOD else None, quality=quality, ts=ts),
            reading("zone1_top_actual", temp if quality == Quality.GOOD else None, unit="Cel", quality=quality,
                    ts=ts),
            reading("conveyor_speed", speed if quality == Quality.GOOD else None, unit="cm/min",
                    quality=quality, ts=ts),
        ],
        ts,
    )


def _events(engine: TriggerEngine, *records: Record) -> list[dict[str, Any]]:
    return [r.body["event"] for r in engine.process(records)]


def test_board_exit_serial_change_emits_unit_processed_with_the_same_polls_snapshot() -> None:
    engine = TriggerEngine(_oven())
    assert _events(engine, _poll("PCB-2026-000001")) == []  # skip_initial: present before we looked
    out = engine.process([_poll("PCB-2026-000002", temp=247.5, speed=82, ts="2026-11-24T20:00:05.000Z")])
    assert len(out) == 1
    record = out[0]
    assert (record.kind, record.equipment, record.equipment_type) == ("event", "reflow-1", "reflow_oven")
    assert record.ts == "2026-11-24T20:00:05.000Z"
    assert record.body["event"] == {
        "type": "unit_processed",
        "serial": "PCB-2026-000002",
        "trigger": "board_exit_serial",
        "value": "PCB-2026-000002",
        "previous": "PCB-2026-000001",
        "values": {
            "zone1_top_actual": {"value": 247.5, "unit": "Cel"},
            "conveyor_speed": {"value": 82, "unit": "cm/min"},
        },
    }


def test_unchanged_value_does_not_fire_again() -> None:
    engine = TriggerEngine(_oven())
    assert _events(engine, _poll("A"), _poll("B"), _poll("B"), _poll("B")) == [
        _events(TriggerEngine(_oven()), _poll("A"), _poll("B"))[0]
    ]


def test_first_value_fires_when_skip_initial_is_false() -> None:
    events = _events(TriggerEngine(_oven(skip_initial=False)), _poll("PCB-1"))
    assert [e["serial"] for e in events] == ["PCB-1"]
    assert events[0]["previous"] is None


def test_bad_quality_neither_fires_nor_forgets_the_previous_value() -> None:
    engine = TriggerEngine(_oven())
    engine.process([_poll("PCB-1")])
    assert _events(engine, _poll(None, quality=Quality.BAD)) == []
    # Same value after the outage: nothing repeats.
    assert _events(engine, _poll("PCB-1")) == []
    # A board left during the next outage: the latest one is reported once the link is back.
    engine.process([_poll(None, quality=Quality.BAD)])
    assert [e["serial"] for e in _events(engine, _poll("PCB-3"))] == ["PCB-3"]


def test_included_signal_with_bad_latest_reading_is_null_with_its_quality() -> None:
    engine = TriggerEngine(_oven())
    engine.process([_poll("PCB-1")])
    ts = "2026-11-24T20:00:09.000Z"
    record = telemetry(
        "reflow-1",
        "reflow_oven",
        [
            reading("zone1_top_actual", None, unit="Cel", quality=Quality.BAD, ts=ts),
            reading("board_exit_serial", "PCB-2", ts=ts),
        ],
        ts,
    )
    (ev,) = _events(engine, record)
    assert ev["values"] == {
        "zone1_top_actual": {"value": None, "unit": "Cel", "quality": "bad"},
        "conveyor_speed": {"value": 80, "unit": "cm/min"},
    }


def test_serial_padding_from_registers_is_stripped_and_an_empty_serial_is_not_a_board() -> None:
    engine = TriggerEngine(_oven())
    engine.process([_poll("PCB-1\x00\x00")])
    assert _events(engine, _poll("")) == []
    assert [e["serial"] for e in _events(engine, _poll("PCB-2  \x00"))] == ["PCB-2"]


def test_constant_fields_are_added_but_cannot_override_computed_ones() -> None:
    engine = TriggerEngine(_oven(fields={"result": "pass", "serial": "nope", "process": "reflow"}))
    engine.process([_poll("A")])
    (ev,) = _events(engine, _poll("B"))
    assert (ev["result"], ev["process"], ev["serial"]) == ("pass", "reflow", "B")


def test_snapshot_uses_latest_values_from_earlier_records_for_push_adapters() -> None:
    """OPC UA subscriptions send one changed node at a time: the snapshot spans earlier records."""
    equipment = _oven(on_change="board_exit_serial", include=["zone1_top_actual", "conveyor_speed"])
    engine = TriggerEngine(equipment)
    ts = "2026-11-24T20:00:00.000Z"
    engine.process([telemetry("reflow-1", "reflow_oven", [reading("board_exit_serial", "A", ts=ts)], ts)])
    engine.process([telemetry("reflow-1", "reflow_oven", [reading("zone1_top_actual", 250.0, unit="Cel", ts=ts)],
                              ts)])
    (ev,) = _events(engine, telemetry("reflow-1", "reflow_oven", [reading("board_exit_serial", "B", ts=ts)], ts))
    assert ev["values"] == {
        "zone1_top_actual": {"value": 250.0, "unit": "Cel"},
        "conveyor_speed": {"value": None, "unit": "cm/min", "quality": "bad"},  # unit from the config
    }


def test_records_of_other_equipment_and_events_are_ignored() -> None:
    engine = TriggerEngine(_oven())
    other = telemetry("reflow-2", "reflow_oven", [reading("board_exit_serial", "X", ts="t")], "t")
    lost = event("reflow-1", "reflow_oven", "connection_lost", reason="timeout")
    engine.process([_poll("A")])
    assert _events(engine, other, lost) == []
    assert [e["serial"] for e in _events(engine, _poll("B"))] == ["B"]


def test_several_changes_in_one_batch_fire_in_order() -> None:
    engine = TriggerEngine(_oven())
    events = _events(engine, _poll("A"), _poll("B"), _poll("C"))
    assert [(e["previous"], e["serial"]) for e in events] == [("A", "B"), ("B", "C")]


def test_two_triggers_on_different_signals_fire_independently() -> None:
    equipment = ModbusEquipment.model_validate(
        {
            "id": "pnp-1",
            "type": "pick_and_place",
            "adapter": "modbus",
            "connection": {"host": "127.0.0.1"},
            "signals": [
                {"name": "board_serial", "table": "holding", "address": 0, "type": "string", "length": 8},
                {"name": "cycle_complete", "table": "coil", "address": 0, "type": "bool"},
                {"name": "slot1_reel_id", "table": "holding", "address": 20, "type": "string", "length": 8},
            ],
            "triggers": [
                {"on_change": "board_serial", "emit": "materials_installed", "serial": "board_serial",
                 "include": ["slot1_reel_id"], "fields": {"slots": {"1": {"ref_designators": ["R1", "R2"]}}}},
                {"on_change": "cycle_complete", "emit": "components_placed", "serial": "board_serial"},
            ],
        }
    )
    engine = TriggerEngine(equipment)
    ts = "2026-11-24T20:00:00.000Z"

    def poll(serial: str, done: bool) -> Record:
        return telemetry("pnp-1", "pick_and_place", [
            reading("board_serial", serial, ts=ts), reading("cycle_complete", done, ts=ts),
            reading("slot1_reel_id", "REEL-7", ts=ts),
        ], ts)

    engine.process([poll("A", False)])
    first = _events(engine, poll("B", False))
    assert [e["type"] for e in first] == ["materials_installed"]
    assert first[0]["values"] == {"slot1_reel_id": {"value": "REEL-7", "unit": None}}
    assert first[0]["slots"] == {"1": {"ref_designators": ["R1", "R2"]}}
    second = _events(engine, poll("B", True))
    assert [(e["type"], e["serial"], e["value"]) for e in second] == [("components_placed", "B", True)]


def _alarm_equipment(skip_initial: bool = False) -> ModbusEquipment:
    return ModbusEquipment.model_validate(
        {
            "id": "reflow-1",
            "type": "reflow_oven",
            "adapter": "modbus",
            "connection": {"host": "127.0.0.1"},
            "signals": [
                {"name": "alarm_conveyor_stopped", "table": "holding", "address": 0, "type": "bool", "bit": 2},
                {"name": "alarm_code", "table": "holding", "address": 1},
            ],
            "triggers": [
                {"on_change": "alarm_conveyor_stopped", "emit": "fault_occurred", "skip_initial": skip_initial,
                 "fields": {"fault_code": "REFLOW-CONVEYOR", "text": "Conveyor stopped", "severity": "error"}},
                {"on_change": "alarm_code", "emit": "fault_occurred", "skip_initial": skip_initial},
            ],
        }
    )


def _alarms(bit: bool, code: int) -> Record:
    ts = "2026-11-24T20:00:00.000Z"
    return telemetry("reflow-1", "reflow_oven", [reading("alarm_conveyor_stopped", bit, ts=ts),
                                                 reading("alarm_code", code, ts=ts)], ts)


def test_alarm_bit_trigger_emits_fault_occurred_then_fault_cleared_with_the_same_occurrence_id() -> None:
    engine = TriggerEngine(_alarm_equipment())
    assert _events(engine, _alarms(False, 0)) == []  # no fault at start: nothing to report
    (occurred,) = _events(engine, _alarms(True, 0))
    assert occurred["type"] == "fault_occurred"
    assert (occurred["fault_code"], occurred["text"], occurred["severity"]) == (
        "REFLOW-CONVEYOR", "Conveyor stopped", "error")
    assert _events(engine, _alarms(True, 0)) == []
    (cleared,) = _events(engine, _alarms(False, 0))
    assert cleared["type"] == "fault_cleared"
    assert cleared["fault_occurrence_id"] == occurred["fault_occurrence_id"]
    (again,) = _events(engine, _alarms(True, 0))
    assert again["fault_occurrence_id"] != occurred["fault_occurrence_id"]


def test_alarm_code_changing_to_another_code_clears_the_first_fault_and_raises_the_second() -> None:
    engine = TriggerEngine(_alarm_equipment())
    (first,) = _events(engine, _alarms(False, 3))  # skip_initial false: active at start is reported
    assert (first["type"], first["fault_code"]) == ("fault_occurred", "3")
    cleared, second = _events(engine, _alarms(False, 5))
    assert (cleared["type"], cleared["fault_code"]) == ("fault_cleared", "3")
    assert cleared["fault_occurrence_id"] == first["fault_occurrence_id"]
    assert (second["type"], second["fault_code"]) == ("fault_occurred", "5")
    (last,) = _events(engine, _alarms(False, 0))
    assert (last["type"], last["fault_occurrence_id"]) == ("fault_cleared", second["fault_occurrence_id"])


def test_fault_active_at_start_is_not_reported_when_skip_initial_is_true() -> None:
    engine = TriggerEngine(_alarm_equipment(skip_initial=True))
    assert _events(engine, _alarms(True, 4)) == []
    # It was never reported, so its end is not reported either; the next one is.
    assert _events(engine, _alarms(False, 0)) == []
    assert [e["type"] for e in _events(engine, _alarms(True, 0))] == ["fault_occurred"]


def _counted_oven() -> ModbusEquipment:
    counter = {"name": "board_exit_count", "table": "holding", "address": 20, "type": "uint32"}
    return _oven(counter="board_exit_count", extra_signals=(counter,))


def _counted(serial: Any, count: int | None, *, ts: str = "2026-11-24T20:00:00.000Z") -> Record:
    record = _poll(serial, ts=ts)
    quality = Quality.GOOD if count is not None else Quality.BAD
    record.body["readings"].append(reading("board_exit_count", count, quality=quality, ts=ts))
    return record


def test_board_counter_jumping_past_the_events_seen_emits_units_missed_with_what_is_known() -> None:
    engine = TriggerEngine(_counted_oven())
    assert _events(engine, _counted("PCB-1", 10)) == []
    assert [e["type"] for e in _events(engine, _counted("PCB-2", 11))] == ["unit_processed"]
    # An outage: PCB-3 and PCB-4 leave while the gateway sees nothing; afterwards only PCB-4 is visible.
    assert _events(engine, _counted(None, None)) == []
    processed, missed = _events(engine, _counted("PCB-4", 13, ts="2026-11-24T20:00:09.000Z"))
    assert (processed["type"], processed["serial"]) == ("unit_processed", "PCB-4")
    assert missed == {
        "type": "units_missed", "count": 1, "trigger": "board_exit_serial", "emit": "unit_processed",
        "counter": "board_exit_count", "counter_from": 11, "counter_to": 13, "last_serial": "PCB-2",
        "next_serial": "PCB-4",
    }
    assert [e["type"] for e in _events(engine, _counted("PCB-5", 14))] == ["unit_processed"]


def test_counter_moving_one_poll_before_the_serial_is_not_a_missed_board() -> None:
    engine = TriggerEngine(_counted_oven())
    _events(engine, _counted("PCB-1", 10))
    assert _events(engine, _counted("PCB-1", 11)) == []  # counter first ...
    assert [e["type"] for e in _events(engine, _counted("PCB-2", 11))] == ["unit_processed"]  # ... then serial
    assert [e["type"] for e in _events(engine, _counted("PCB-3", 11))] == ["unit_processed"]  # serial first ...
    assert _events(engine, _counted("PCB-3", 12)) == []  # ... then the counter


def test_counter_reset_by_a_machine_restart_is_not_a_missed_board() -> None:
    engine = TriggerEngine(_counted_oven())
    _events(engine, _counted("PCB-1", 500))
    assert _events(engine, _counted("PCB-1", 0)) == []
    assert [e["type"] for e in _events(engine, _counted("PCB-2", 1))] == ["unit_processed"]


def test_a_counter_ahead_without_any_event_is_announced_after_a_few_polls() -> None:
    engine = TriggerEngine(_counted_oven())
    _events(engine, _counted("PCB-1", 10))
    seen = [e for _ in range(4) for e in _events(engine, _counted("PCB-1", 12))]
    assert [(e["type"], e["count"], e["last_serial"], e["next_serial"]) for e in seen] == [
        ("units_missed", 2, "PCB-1", None)]  # the serial shown when the counter was first read


def test_fault_text_from_a_snapshotted_text_signal_goes_into_the_events_text() -> None:
    engine = TriggerEngine(ModbusEquipment.model_validate({
        "id": "pnp-1", "type": "pick_and_place", "adapter": "modbus", "connection": {"host": "127.0.0.1"},
        "signals": [{"name": "alarm_code", "table": "holding", "address": 1},
                    {"name": "alarm_text", "table": "holding", "address": 2, "type": "string", "length": 8}],
        "triggers": [{"on_change": "alarm_code", "emit": "fault_occurred", "skip_initial": False,
                      "include": ["alarm_text"], "fields": {"severity": "error"}}],
    }))
    ts = "2026-11-24T20:00:00.000Z"
    (occurred,) = _events(engine, telemetry("pnp-1", "pick_and_place", [
        reading("alarm_code", 1201, ts=ts), reading("alarm_text", "Feeder 3 pick error\x00", ts=ts)], ts))
    assert (occurred["fault_code"], occurred["text"], occurred["severity"]) == ("1201", "Feeder 3 pick error", "error")
