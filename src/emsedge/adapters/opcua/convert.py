"""OPC UA values, status codes and timestamps -> the plain JSON readings of the MES contract.

Invariants:
* every value this module returns is plain JSON (None, bool, int, float, str, list, dict) so the encoder
  never falls back to `str()` on a library object;
* a reading's `ts` is the SourceTimestamp, else the ServerTimestamp, else the gateway's receive time;
  `server_ts` is added only when the server stamped a different time (DOMAIN.md §4: keep both);
* quality comes from the top two bits of the StatusCode (00 good, 01 uncertain, 1x bad) and non-good
  readings keep the status name (e.g. `BadNodeIdUnknown`), so MES can tell *why* a value is missing;
* a bad reading's value is None, and a NaN or infinite float turns a good reading into a bad one with
  status `BadOutOfRange` (JSON has no NaN; a silent null would look like a real gap);
* whatever the server sends, converting it never raises and never yields what the encoder refuses:
  strings are text in the signal's `encoding` (asyncua keeps undecodable UTF-8 bytes as lone surrogates;
  they are re-decoded with errors replaced), and values beyond `emsedge.adapters.values` bounds
  (nesting, element count, 64-bit integers) become a bad reading whose `status` says which bound;
* a source or server timestamp at OPC UA's MinValue (1601-01-01, "no time") counts as absent.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import uuid
from datetime import datetime
from enum import Enum
from typing import Any

from asyncua import ua

from emsedge.adapters.opcua.config import OpcUaSignal
from emsedge.adapters.values import Budget, ValueRejected, check_int, repair_text
from emsedge.schema import Quality, utc_iso

_NOT_FINITE = "BadOutOfRange"
_NO_TIME_BEFORE = datetime(1601, 1, 2)  # naive, like asyncua's (UTC)
"""OPC UA DateTime MinValue (0 = 1601-01-01) means "no time"; anything before this is that."""


def to_json(value: Any, encoding: str = "utf-8", budget: Budget | None = None) -> Any:
    """Convert a Variant's Python value to plain JSON; NaN/inf come back as the float (see `_finite`).

    Raises `ValueRejected` (with an OPC UA status name and a reason) for a value beyond the bounds of
    `budget` (a fresh default `Budget` when None); never anything else for any input.
    """
    return _to_json(value, encoding, budget if budget is not None else Budget(), 0)


def _to_json(value: Any, encoding: str, budget: Budget, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return repair_text(value, encoding)
    if isinstance(value, int):  # includes IntEnum (OPC UA enumerations) -> plain int
        return check_int(int(value))
    if isinstance(value, float):
        return value
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, (list, tuple)):
        budget.enter(depth + 1, len(value))
        return [_to_json(v, encoding, budget, depth + 1) for v in value]
    if isinstance(value, ua.Variant):
        return _to_json(value.Value, encoding, budget, depth)
    if isinstance(value, ua.LocalizedText):
        return repair_text(value.Text, encoding) if isinstance(value.Text, str) else None
    if isinstance(value, (ua.QualifiedName, ua.NodeId)):
        return repair_text(value.to_string(), encoding)
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, (bytes, bytearray)):
        budget.enter(depth, len(value) // 64)
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return _to_json(value.value, encoding, budget, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        budget.enter(depth + 1, len(fields))
        return {f.name: _to_json(getattr(value, f.name, None), encoding, budget, depth + 1) for f in fields}
    return repair_text(str(value), encoding)


def safe_json(value: Any, encoding: str = "utf-8") -> Any:
    """`to_json` for fields that have no quality of their own (event texts): out of bounds -> None."""
    try:
        return to_json(value, encoding)
    except ValueRejected:
        return None


def valid_time(value: datetime | None) -> datetime | None:
    if value is None or not isinstance(value, datetime):
        return None
    return None if value.replace(tzinfo=None) < _NO_TIME_BEFORE else value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def quality_of(status: ua.StatusCode | None) -> Quality:
    """Severity bits of a StatusCode: 00 good, 01 uncertain, 10/11 bad. A missing status means good."""
    if status is None:
        return Quality.GOOD
    severity = (status.value >> 30) & 0b11
    if severity == 0:
        return Quality.GOOD
    if severity == 1:
        return Quality.UNCERTAIN
    return Quality.BAD


def status_name(status: ua.StatusCode) -> str:
    name = status.name
    return name if name and not name.startswith("Unknown") else f"0x{status.value:08X}"


def reading_from_datavalue(
    signal: OpcUaSignal, dv: ua.DataValue, received: float, encoding: str = "utf-8"
) -> dict[str, Any]:
    """One reading from a DataValue (Read result or data-change notification); never raises.

    `encoding` is the adapter's; a signal's own `encoding` wins. A value beyond the bounds is a bad
    reading whose `status` names the bound (`BadEncodingLimitsExceeded`, `BadOutOfRange`).
    """
    status = dv.StatusCode
    quality = quality_of(status)
    source = valid_time(dv.SourceTimestamp)
    server = valid_time(dv.ServerTimestamp)
    ts = utc_iso(source) if source is not None else utc_iso(server) if server is not None else utc_iso(received)
    raw = dv.Value.Value if dv.Value is not None else None
    rejected: ValueRejected | None = None
    try:
        value = to_json(raw, signal.encoding or encoding) if quality is not Quality.BAD else None
    except ValueRejected as exc:
        value, rejected = None, exc
    r: dict[str, Any] = {"signal": signal.name, "value": value, "unit": signal.unit, "quality": str(quality), "ts": ts}
    if quality is not Quality.GOOD and status is not None:
        r["status"] = status_name(status)
    if rejected is not None:
        r["quality"] = str(Quality.BAD)
        r["status"] = rejected.status
    if value is not None and not _finite(value):
        r["value"] = None
        r["quality"] = str(Quality.BAD)
        r["status"] = _NOT_FINITE
    if server is not None and source is not None:
        server_ts = utc_iso(server)
        if server_ts != ts:
            r["server_ts"] = server_ts
    return r


def bad_reading(signal: OpcUaSignal, status: str, ts: str) -> dict[str, Any]:
    return {"signal": signal.name, "value": None, "unit": signal.unit, "quality": str(Quality.BAD), "ts": ts,
            "status": status}
