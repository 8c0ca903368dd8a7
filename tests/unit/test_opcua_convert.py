"""Variant -> plain JSON, StatusCode -> quality, DataValue timestamps -> reading fields."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid

import pytest
from asyncua import ua

from emsedge.adapters.opcua.config import OpcUaSignal
from emsedge.adapters.opcua.convert import quality_of, reading_from_datavalue, to_json
from emsedge.schema import Quality

SIGNAL = OpcUaSignal(name="vacuum", node="ns=2;s=V", unit="kPa")


class MachineMode(enum.IntEnum):
    AUTO = 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (42, 42),
        (MachineMode.AUTO, 3),
        (1.5, 1.5),
        ("SN1", "SN1"),
        (dt.datetime(2026, 5, 6, 7, 8, 9, 123456), "2026-05-06T07:08:09.123Z"),
        ([1, 2, 3], [1, 2, 3]),
        ([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
        (ua.LocalizedText("Running", "en"), "Running"),
        (ua.QualifiedName("Head1", 2), "2:Head1"),
        (ua.NodeId("PnP.State", 2), "ns=2;s=PnP.State"),
        (b"\x01\xff", "Af8="),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (ua.StatusCode(ua.StatusCodes.BadTimeout), "BadTimeout"),
        (ua.Variant(7, ua.VariantType.Int16), 7),
        (None, None),
    ],
)
def test_variant_values_become_plain_json(value: object, expected: object) -> None:
    assert to_json(value) == expected
    json.dumps(to_json(value))


def test_structures_become_json_objects() -> None:
    out = to_json(ua.Range(Low=0.0, High=100.0))
    assert out == {"Low": 0.0, "High": 100.0}


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.GoodClamped, Quality.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD),
        (ua.StatusCodes.BadCommunicationError, Quality.BAD),
    ],
)
def test_status_severity_bits_decide_quality(code: int, quality: Quality) -> None:
    assert quality_of(ua.StatusCode(code)) is quality


def test_reading_uses_source_then_server_then_receive_time() -> None:
    src = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
    srv = src + dt.timedelta(milliseconds=250)
    both = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(1.0), SourceTimestamp=src, ServerTimestamp=srv), 0)
    assert both["ts"] == "2026-01-02T03:04:05.600Z"
    assert both["server_ts"] == "2026-01-02T03:04:05.850Z"
    only_server = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(1.0), ServerTimestamp=srv), 0)
    assert only_server["ts"] == "2026-01-02T03:04:05.850Z"
    assert "server_ts" not in only_server
    neither = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(1.0)), 1_700_000_000.0)
    assert neither["ts"] == "2023-11-14T22:13:20.000Z"
    same = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(1.0), SourceTimestamp=src, ServerTimestamp=src), 0)
    assert "server_ts" not in same


def test_bad_status_nulls_the_value_and_keeps_the_status_name() -> None:
    dv = ua.DataValue(ua.Variant(3.0), StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
    r = reading_from_datavalue(SIGNAL, dv, 0)
    assert (r["value"], r["quality"], r["status"], r["unit"]) == (None, "bad", "BadNodeIdUnknown", "kPa")


def test_non_finite_floats_become_bad_null_readings() -> None:
    for bad in (float("nan"), float("inf"), [1.0, float("-inf")]):
        r = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(bad)), 0)
        assert (r["value"], r["quality"], r["status"]) == (None, "bad", "BadOutOfRange")
