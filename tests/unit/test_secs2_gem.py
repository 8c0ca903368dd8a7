"""GEM host helpers that need no socket: event report parsing, pass/fail, alarm severity, SECS time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.hsms.config import HsmsEquipment
from emsedge.adapters.hsms.gem import (
    HsmsAdapter,
    MalformedMessage,
    _is_pass,
    _parse_secs_time,
    alarm_severity,
    parse_event_report,
)
from emsedge.adapters.hsms.secs2 import U4, A, L
from emsedge.schema import Record


def adapter(**event: Any) -> HsmsAdapter:
    config = HsmsEquipment.model_validate({
        "id": "ict-1", "type": "ict", "adapter": "hsms",
        "reports": [{"rptid": 1, "vids": [10, 11, 12], "names": ["serial", "verdict", "failures"]}],
        "events": [{"name": "board_tested", "ceid": 50, "reports": [1], **event}],
    })  # fmt: skip

    async def emit(records: Any) -> None:
        return None

    return HsmsAdapter(AdapterContext(equipment=config, emit=emit))


def test_event_report_body_is_parsed_into_ceid_and_report_values() -> None:
    body = L(U4(7), U4(50), L(L(U4(1), L(A("SN1"), U4(1), L()))))
    dataid, ceid, reports = parse_event_report(body)
    assert (dataid, ceid) == (7, 50)
    assert reports[0][0] == 1
    assert [i.to_python() for i in reports[0][1]] == ["SN1", 1, []]


@pytest.mark.parametrize("body", [None, U4(1), L(U4(1), U4(2)), L(U4(1), U4(2), U4(3)), L(U4(1), U4(2), L(U4(1)))])
def test_event_report_of_the_wrong_shape_is_malformed(body: Any) -> None:
    with pytest.raises(MalformedMessage):
        parse_event_report(body)


@pytest.mark.parametrize(
    ("raw", "passed"),
    [("PASS", True), (" OK ", True), ("pass", True), (1, True), (True, True), ("FAIL", False), (0, False),
     (None, False), ("NG", False), (2, False)],
)  # fmt: skip
def test_pass_values_decide_pass_or_fail(raw: Any, passed: bool) -> None:
    assert _is_pass(raw, ["PASS", "pass", "OK", "ok", "GOOD", 1, True]) is passed


def test_unit_tested_event_carries_serial_result_and_defect_list() -> None:
    record: Record = adapter(emit="unit_tested", serial="serial", result="verdict", defects="failures",
                             pass_values=[0])._event_record(50, {"serial": "SN9", "verdict": 3, "failures": ["U7"]})
    event = record.body["event"]
    assert event["type"] == "unit_tested"
    assert (event["serial"], event["result"], event["raw_result"], event["defects"]) == (
        "SN9", "fail", 3, [{"refdes": "U7", "code": None, "text": None}])


def test_event_without_emit_becomes_telemetry_named_after_the_report_values() -> None:
    record = adapter()._event_record(50, {"serial": "SN9", "verdict": 0})
    assert record.kind == "telemetry"
    assert [(r["signal"], r["value"]) for r in record.body["readings"]] == [("serial", "SN9"), ("verdict", 0)]


def test_alarm_categories_map_to_severities() -> None:
    assert alarm_severity(0x81) == "critical"
    assert alarm_severity(0x03) == "warning"
    assert alarm_severity(0x85) == "error"
    assert alarm_severity(0x07) == "info"
    assert alarm_severity(0x00) == "error"


def test_secs_time_formats_are_parsed_as_utc() -> None:
    expected = datetime(2026, 11, 24, 20, 13, 45, tzinfo=UTC).timestamp()
    assert _parse_secs_time("2026112420134512") == pytest.approx(expected + 0.12)
    assert _parse_secs_time("261124201345") == pytest.approx(expected)
    assert _parse_secs_time("2026-11-24T21:13:45+01:00") == pytest.approx(expected)
    assert _parse_secs_time("yesterday") is None
