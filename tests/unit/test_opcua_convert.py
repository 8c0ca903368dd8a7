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


def test_a_latin1_byte_in_a_string_is_decoded_with_the_configured_encoding() -> None:
    raw = "25 °C".encode("latin-1")  # what asyncua hands over: undecodable bytes as lone surrogates
    as_received = raw.decode("utf-8", "surrogateescape")
    dv = ua.DataValue(ua.Variant(as_received, ua.VariantType.String))
    assert reading_from_datavalue(SIGNAL, dv, 0)["value"] == "25 \ufffdC"
    assert reading_from_datavalue(SIGNAL, dv, 0, "latin-1")["value"] == "25 °C"
    signal = OpcUaSignal(name="t", node="ns=2;s=T", encoding="cp1252")
    assert reading_from_datavalue(signal, dv, 0)["value"] == "25 °C"
    assert reading_from_datavalue(SIGNAL, dv, 0)["quality"] == "good"


def test_an_unknown_encoding_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="unknown text encoding"):
        OpcUaSignal(name="t", node="ns=2;s=T", encoding="klingon")


def test_absurd_nesting_size_and_integers_make_a_bad_reading_naming_the_bound() -> None:
    nested: object = [1]
    for _ in range(259):
        nested = [nested]
    deep = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(nested)), 0)
    assert (deep["quality"], deep["value"], deep["status"]) == ("bad", None, "BadEncodingLimitsExceeded")
    huge = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(list(range(200_000)))), 0)
    assert (huge["quality"], huge["status"]) == ("bad", "BadEncodingLimitsExceeded")
    wide = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(2**64)), 0)
    assert (wide["quality"], wide["status"]) == ("bad", "BadOutOfRange")
    fine = reading_from_datavalue(SIGNAL, ua.DataValue(ua.Variant(2**64 - 1, ua.VariantType.UInt64)), 0)
    assert (fine["quality"], fine["value"]) == ("good", 2**64 - 1)


def test_a_minvalue_source_time_falls_back_to_the_server_time() -> None:
    srv = dt.datetime(2026, 5, 6, 7, 8, 9)
    dv = ua.DataValue(ua.Variant(1.0), SourceTimestamp=dt.datetime(1601, 1, 1), ServerTimestamp=srv)
    r = reading_from_datavalue(SIGNAL, dv, 0)
    assert r["ts"] == "2026-05-06T07:08:09.000Z"
    assert "server_ts" not in r
    neither = ua.DataValue(ua.Variant(1.0), SourceTimestamp=dt.datetime(1601, 1, 1),
                           ServerTimestamp=dt.datetime(1601, 1, 1))
    assert reading_from_datavalue(SIGNAL, neither, 1_700_000_000.0)["ts"] == "2023-11-14T22:13:20.000Z"
