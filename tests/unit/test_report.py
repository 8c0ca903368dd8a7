"""The report-by-exception stage on its own (emsedge.report.Reporter), with a manual clock."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.config import Precision
from emsedge.report import Reporter
from emsedge.schema import EventType, Record, event, reading, telemetry

TS = "2026-01-01T00:00:00.000Z"


def equipment(**extra: Any) -> ModbusEquipment:
    return ModbusEquipment.model_validate({
        "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "127.0.0.1"},
        "signals": [{"name": "a", "table": "holding", "address": 0, "type": "float32"},
                    {"name": "b", "table": "holding", "address": 2}],
        **extra,
    })


def batch(**values: Any) -> list[Record]:
    quality = values.pop("quality", "good")
    return [telemetry("reflow-1", "reflow_oven", [reading(k, v, quality=quality, ts=TS) for k, v in values.items()])]


def sent(records: list[Record]) -> dict[str, Any]:
    return {r["signal"]: r["value"] for rec in records if rec.kind == "telemetry" for r in rec.body["readings"]}


def test_publish_always_passes_every_reading_and_only_rounds() -> None:
    reporter = Reporter(equipment(precision="4 significant"))
    assert sent(reporter.process(batch(a=247.0500030517578, b=3))) == {"a": 247.1, "b": 3}
    assert sent(reporter.process(batch(a=247.0500030517578, b=3))) == {"a": 247.1, "b": 3}


def test_without_any_setting_the_records_pass_as_they_are() -> None:
    records = batch(a=1.23456789, b=1)
    assert Reporter(equipment()).process(records) == records


def test_the_input_records_are_never_changed() -> None:
    reporter = Reporter(equipment(publish="on_change", precision=1), clock=lambda: 0.0)
    first, second = batch(a=1.26, b=1), batch(a=1.26, b=2)
    before = copy.deepcopy([first, second])
    reporter.process(first)
    reporter.process(second)
    assert [first, second] == before


def test_a_quality_change_is_reported_even_when_the_value_is_unchanged() -> None:
    reporter = Reporter(equipment(publish="on_change", deadband=5), clock=lambda: 0.0)
    reporter.process(batch(a=1.0, b=1))
    assert sent(reporter.process(batch(a=1.0, quality="bad"))) == {"a": 1.0}


def test_events_pass_through_in_order_and_a_fully_suppressed_telemetry_message_is_dropped() -> None:
    reporter = Reporter(equipment(publish="on_change"), clock=lambda: 0.0)
    reporter.process(batch(a=1.0, b=1))
    ev = event("reflow-1", "reflow_oven", EventType.UNIT_PROCESSED, TS, serial="X")
    assert reporter.process([*batch(a=1.0, b=1), ev]) == [ev]


def test_a_signal_can_opt_out_of_on_change() -> None:
    eq = equipment(publish="on_change", signals=[
        {"name": "a", "table": "holding", "address": 0, "type": "float32", "publish": "always"},
        {"name": "b", "table": "holding", "address": 2}])
    reporter = Reporter(eq, clock=lambda: 0.0)
    reporter.process(batch(a=1.0, b=1))
    assert sent(reporter.process(batch(a=1.0, b=1))) == {"a": 1.0}


@pytest.mark.parametrize(("written", "parsed"), [
    (2, Precision(decimals=2)), ("3", Precision(decimals=3)), ("4 significant", Precision(significant=4)),
    ({"significant": 2}, Precision(significant=2)),
])
def test_precision_is_written_as_decimals_or_significant_digits(written: object, parsed: Precision) -> None:
    assert equipment(precision=written).precision == parsed
