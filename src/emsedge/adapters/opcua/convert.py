"""OPC UA values, status codes and timestamps -> the plain JSON readings of the MES contract.

Invariants:
* every value this module returns is plain JSON (None, bool, int, float, str, list, dict) so the encoder
  never falls back to `str()` on a library object;
* a reading's `ts` is the SourceTimestamp, else the ServerTimestamp, else the gateway's receive time;
  `server_ts` is added only when the server stamped a different time (DOMAIN.md §4: keep both);
* quality comes from the top two bits of the StatusCode (00 good, 01 uncertain, 1x bad) and non-good
  readings keep the status name (e.g. `BadNodeIdUnknown`), so MES can tell *why* a value is missing;
* a bad reading's value is None, and a NaN or infinite float turns a good reading into a bad one with
  status `BadOutOfRange` (JSON has no NaN; a silent null would look like a real gap).
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
from emsedge.schema import Quality, utc_iso

_NOT_FINITE = "BadOutOfRange"


def to_json(value: Any) -> Any:
    """Convert a Variant's Python value to plain JSON; NaN/inf come back as the float (see `is_finite`)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):  # includes IntEnum (OPC UA enumerations) -> plain int
        return int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, ua.Variant):
        return to_json(value.Value)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.QualifiedName):
        return value.to_string()
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return to_json(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


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


def reading_from_datavalue(signal: OpcUaSignal, dv: ua.DataValue, received: float) -> dict[str, Any]:
    """One reading from a DataValue (Read result or data-change notification)."""
    status = dv.StatusCode
    quality = quality_of(status)
    source = dv.SourceTimestamp
    server = dv.ServerTimestamp
    ts = utc_iso(source) if source is not None else utc_iso(server) if server is not None else utc_iso(received)
    raw = dv.Value.Value if dv.Value is not None else None
    value = to_json(raw) if quality is not Quality.BAD else None
    r: dict[str, Any] = {"signal": signal.name, "value": value, "unit": signal.unit, "quality": str(quality), "ts": ts}
    if quality is not Quality.GOOD and status is not None:
        r["status"] = status_name(status)
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
