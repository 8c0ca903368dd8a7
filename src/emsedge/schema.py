"""The MES contract: what goes over MQTT (JSON, UTF-8), versioned.

Two layers live here:

* `Record` and the builders `telemetry()` / `event()` are what adapters hand to the pipeline. They are
  plain dataclasses and dicts, deliberately not pydantic models: the hot path builds thousands of
  readings per second and must not validate each one.
* The pydantic models (`TelemetryMessage`, `EventMessage`, `StatusMessage`) document and validate the
  wire format. Tests and integrators use them; `docs/mqtt-contract.md` shows an example of each.

`encode()` turns a `Record` into the final payload bytes once it has its `id` and `seq` (assigned by the
buffer inside the transaction that makes it durable, so `seq` is strictly increasing and persisted).
"""

from __future__ import annotations

import math
import reprlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_TELEMETRY = "emsedge/telemetry@1"
SCHEMA_EVENT = "emsedge/event@1"
SCHEMA_STATUS = "emsedge/status@1"

GATEWAY_EQUIPMENT = "_gateway"
"""Pseudo equipment id for the gateway's own events (buffer_dropped) and status topic."""

Kind = Literal["telemetry", "event"]


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class EventType(StrEnum):
    """Event types, named after IPC-CFX (IPC-2591) messages so a CFX mapping is mechanical."""

    STATION_STATE_CHANGED = "station_state_changed"  # CFX.ResourcePerformance.StationStateChanged
    FAULT_OCCURRED = "fault_occurred"  # CFX.ResourcePerformance.FaultOccurred
    FAULT_CLEARED = "fault_cleared"  # CFX.ResourcePerformance.FaultCleared
    UNIT_PROCESSED = "unit_processed"  # CFX.Production.Processing.UnitsProcessed
    UNIT_TESTED = "unit_tested"  # CFX.Production.TestAndInspection.UnitsTested
    UNIT_INSPECTED = "unit_inspected"  # CFX.Production.TestAndInspection.UnitsInspected
    MATERIALS_INSTALLED = "materials_installed"  # CFX.Production.Assembly.MaterialsInstalled
    COMPONENTS_PLACED = "components_placed"  # CFX.ResourcePerformance.SMTPlacement.ComponentsPlaced
    CONNECTION_LOST = "connection_lost"  # gateway's own
    CONNECTION_RESTORED = "connection_restored"  # gateway's own
    BUFFER_DROPPED = "buffer_dropped"  # gateway's own
    COLLECTION_EVENT = "collection_event"  # SECS/GEM event report for a CEID the config does not map
    FILE_REJECTED = "file_rejected"  # gateway's own: a tester result file that could not be read (result_files)
    UNPROCESSABLE = "unprocessable"  # gateway's own: a record that could not be encoded, in its place


EMITTABLE_EVENTS: tuple[EventType, ...] = (
    EventType.UNIT_PROCESSED,
    EventType.UNIT_TESTED,
    EventType.UNIT_INSPECTED,
    EventType.MATERIALS_INSTALLED,
    EventType.COMPONENTS_PLACED,
    EventType.FAULT_OCCURRED,
    EventType.FAULT_CLEARED,
    EventType.STATION_STATE_CHANGED,
)
"""Event types a config may name (`emit:` of a trigger or a SECS/GEM collection event). The others are the
gateway's own (connection, buffer) or the fallback for an unmapped collection event."""


# SEMI E58 / CFX ResourceState codes -> names used in station_state_changed events.
STATION_STATES: dict[int, str] = {
    1000: "productive",
    1100: "productive",
    2000: "standby",
    2100: "standby_no_operator",
    2200: "standby_no_product",
    2201: "blocked",
    2202: "starved",
    3000: "engineering",
    4000: "scheduled_down",
    4300: "preventive_maintenance",
    4400: "change_of_consumables",
    4500: "setup",
    5000: "unscheduled_down",
    5300: "repair",
    6000: "non_scheduled",
}


def state_name(code: int) -> str:
    """Name of an E58 state code; unknown codes fall back to their category (first digit * 1000)."""
    return STATION_STATES.get(code) or STATION_STATES.get(code // 1000 * 1000, "unknown")


def utc_iso(ts: float | datetime | None = None) -> str:
    """UTC ISO-8601 with milliseconds and `Z`, the only time format in payloads."""
    if ts is None:
        ts = time.time()
    if isinstance(ts, datetime):
        if ts.tzinfo is None:  # naive datetimes from devices are UTC by convention (OPC UA, SECS clocks)
            ts = ts.replace(tzinfo=UTC)
        ts = ts.timestamp()
    whole = math.floor(ts)  # floor, not int(): -0.5 is 23:59:59.500 of the day before, never ".-500"
    millis = round((ts - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def reading(
    signal: str,
    value: Any,
    *,
    unit: str | None = None,
    quality: Quality | str = Quality.GOOD,
    ts: str,
    **extra: Any,
) -> dict[str, Any]:
    """One reading as the plain dict that goes on the wire (no model object per reading)."""
    r: dict[str, Any] = {"signal": signal, "value": value, "unit": unit, "quality": str(quality), "ts": ts}
    if extra:
        r.update(extra)
    return r


@dataclass(slots=True)
class Record:
    """One message on its way to MES, before the buffer gives it an `id` and a `seq`."""

    kind: Kind
    equipment: str
    equipment_type: str
    ts: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def event_type(self) -> str | None:
        event = self.body.get("event")
        return event.get("type") if isinstance(event, dict) else None


def telemetry(equipment: str, equipment_type: str, readings: list[dict[str, Any]], ts: str | None = None) -> Record:
    return Record("telemetry", equipment, equipment_type, ts or utc_iso(), {"readings": readings})


def event(
    equipment: str, equipment_type: str, type: str | EventType, ts: str | None = None, **fields: Any
) -> Record:
    return Record("event", equipment, equipment_type, ts or utc_iso(), {"event": {"type": str(type), **fields}})


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS  # device structures may be keyed by numbers


def _json_default(value: Any) -> str:
    return str(value)  # anything a device hands us that JSON has no type for (Decimal, bytes-like, enums)


def encode(record: Record, *, gateway: str, seq: int, message_id: str) -> bytes:
    """The final payload: envelope first, then the body. One serialisation per message."""
    envelope: dict[str, Any] = {
        "schema": SCHEMA_TELEMETRY if record.kind == "telemetry" else SCHEMA_EVENT,
        "id": message_id,
        "seq": seq,
        "gateway": gateway,
        "equipment": record.equipment,
        "equipment_type": record.equipment_type,
        "ts": record.ts,
    }
    envelope.update(record.body)
    # orjson: ~5x faster than the stdlib encoder, the largest single cost of the hot path (measured with
    # py-spy on the Modbus pipeline); UTF-8 out, NaN/inf become null (adapters already mark them bad).
    return orjson.dumps(envelope, default=_json_default, option=_ORJSON_OPTIONS)


# ---------------------------------------------------------------------------------------------------
# Poison isolation: what stands in for a record `encode` refused (the buffer's writer never raises on one)

UNPROCESSABLE_STATUS = "Unprocessable"
"""`status` of a reading put in place of one that could not be encoded."""
RAW_LIMIT = 200
"""Characters of the escaped raw value kept in an `unprocessable` reading or event."""
MAX_DEPTH = 200
"""Nesting the encoder is trusted with (orjson refuses beyond 254 levels; headroom for the envelope)."""
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_WALK_LIMIT = 100_000

_raw_repr = reprlib.Repr()
_raw_repr.maxlevel = 4
_raw_repr.maxstring = RAW_LIMIT
_raw_repr.maxother = RAW_LIMIT
_raw_repr.maxlong = 40


def escape_raw(value: Any, limit: int = RAW_LIMIT) -> str:
    """A printable, ASCII-only, bounded rendering of anything (surrogates as \\udcb0, huge ints elided)."""
    try:
        text = _raw_repr.repr(value)
    except Exception as exc:  # a repr that raises (int over the str digit limit, a broken __repr__)
        text = f"<{type(value).__name__}: {type(exc).__name__}>"
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"<key {escape_raw(k, 40)}>", k
            yield str(k), v
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield str(i), v


def find_unencodable(value: Any) -> tuple[str, str, Any] | None:
    """The first part of `value` the encoder cannot take: (dotted path, reason, the part), or None.

    Iterative and bounded (no recursion, at most 100,000 nodes), so a hostile structure cannot make the
    search itself fail."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    seen = 0
    while stack and seen < _WALK_LIMIT:
        path, item, depth = stack.pop()
        seen += 1
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path, "string not valid UTF-8 (undecoded bytes)", item
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                return path, "integer outside 64 bits", item
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels", item
            children = list(_children(item))
            for sub, child in reversed(children):
                stack.append((f"{path}.{sub}" if path else sub, child, depth + (0 if sub.startswith("<key") else 1)))
    return None


def safe_text(text: Any, limit: int = RAW_LIMIT) -> str:
    """`text` when it is valid UTF-8 within `limit` characters (truncated otherwise), else `escape_raw(text)`."""
    if isinstance(text, str):
        clean: str = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return clean if len(clean) <= limit else clean[: limit - 3] + "..."
    return escape_raw(text, limit)


def unprocessable(record: Record, error: BaseException) -> tuple[Record, list[tuple[str, str, str]]]:
    """What goes to MES in place of a record `encode` raised on, and what was replaced.

    Telemetry keeps its good readings; each reading that cannot be encoded becomes a bad reading with
    `status: Unprocessable`, the `reason` and the escaped, truncated `raw` value. Anything else (an event,
    a broken envelope) becomes one `unprocessable` event naming the original type, the path and the reason.
    Returns (replacement, [(signal, reason, raw), ...]); `encode(replacement)` does not raise.
    """
    equipment, equipment_type = safe_text(record.equipment), safe_text(record.equipment_type)
    ts = safe_text(record.ts, 40)
    readings = record.body.get("readings") if record.kind == "telemetry" else None
    envelope_ok = find_unencodable([record.equipment, record.equipment_type, record.ts]) is None
    if envelope_ok and isinstance(readings, list) and set(record.body) == {"readings"}:
        out: list[Any] = []
        problems: list[tuple[str, str, str]] = []
        for r in readings:
            found = find_unencodable(r)
            if found is None:
                try:
                    orjson.dumps(r, default=_json_default, option=_ORJSON_OPTIONS)
                    out.append(r)
                    continue
                except Exception as exc:
                    found = ("", escape_raw(str(exc)), r)
            signal = safe_text(r.get("signal") if isinstance(r, dict) else None, 100)
            path, reason, part = found
            raw = escape_raw(part.get("value") if isinstance(part, dict) and "value" in part else part)
            out.append({
                "signal": signal, "value": None, "unit": safe_text(r.get("unit"), 40) if isinstance(r, dict)
                and r.get("unit") is not None else None, "quality": str(Quality.BAD),
                "ts": safe_text(r.get("ts"), 40) if isinstance(r, dict) and isinstance(r.get("ts"), str) else ts,
                "status": UNPROCESSABLE_STATUS, "reason": reason, "raw": raw,
            })
            problems.append((signal, reason, raw))
        if problems:
            return Record("telemetry", equipment, equipment_type, ts, {"readings": out}), problems
    envelope = {"equipment": record.equipment, "equipment_type": record.equipment_type, "ts": record.ts}
    found = find_unencodable(envelope) or find_unencodable(record.body)
    if found is None:
        path, reason, raw = "", escape_raw(f"{type(error).__name__}: {error}"), escape_raw(record.body)
    else:
        path, reason, part = found
        raw = escape_raw(part)
    original = record.event_type if record.kind == "event" else record.kind
    signal = safe_text(path, 100)
    replacement = event(
        equipment, equipment_type, EventType.UNPROCESSABLE, ts,
        original_type=safe_text(original, 100), signal=signal, reason=reason, raw=raw,
    )
    return replacement, [(signal, reason, raw)]


def mark_replayed(payload: bytes) -> bytes:
    """Add `"replayed":true` to an encoded payload without re-parsing it (replay is a hot path)."""
    return payload[:-1] + b',"replayed":true}'


# ---------------------------------------------------------------------------------------------------
# Wire models: the documented contract. Validation only; the hot path never builds these.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadingModel(_Wire):
    signal: str = Field(description="Signal name from the config.")
    value: Any = Field(description="Plain JSON value (number, bool, string, list); null when quality is bad.")
    unit: str | None = Field(description="UCUM-style unit from the config, e.g. Cel, kPa, cm/min.")
    quality: Quality
    ts: str = Field(description="When the value was sampled (source timestamp when the device gives one).")
    status: str | None = Field(default=None, description="Protocol status name, e.g. OPC UA BadNodeIdUnknown.")
    server_ts: str | None = Field(
        default=None, description="OPC UA ServerTimestamp, present only when it differs from `ts`."
    )
    reason: str | None = Field(
        default=None, description="With status Unprocessable: why the value could not be encoded."
    )
    raw: str | None = Field(
        default=None, description="With status Unprocessable: the value, escaped (ASCII) and truncated."
    )


class _Envelope(_Wire):
    id: str = Field(description="UUID, stable across redelivery: de-duplicate by it.")
    seq: int = Field(description="Per gateway, strictly increasing, persisted across restarts: detect gaps.")
    gateway: str
    equipment: str
    equipment_type: str
    ts: str = Field(description="UTC ISO-8601 with milliseconds and Z: when it happened.")
    replayed: bool | None = Field(default=None, description="true when delivered from the backlog.")


class TelemetryMessage(_Envelope):
    schema_: Literal["emsedge/telemetry@1"] = Field(alias="schema")
    readings: list[ReadingModel]


class EventBody(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    type: EventType


class EventMessage(_Envelope):
    schema_: Literal["emsedge/event@1"] = Field(alias="schema")
    event: EventBody


TestResult = Literal["pass", "fail", "aborted", "error"]


class MeasurementModel(_Wire):
    name: str
    value: float | str | None = Field(description="In base SI units (100.2K ohm is 100200.0 with unit Ohm).")
    unit: str | None
    low: float | None
    high: float | None
    nominal: float | None
    result: TestResult | None


class TestModel(_Wire):
    __test__ = False  # a contract name, not a pytest class

    name: str
    result: TestResult
    raw_result: str | None
    measurements: list[MeasurementModel]


class ResultSourceModel(_Wire):
    file: str = Field(description="File name, relative to the scanned folder.")
    sha256: str = Field(description="Hash of the file's content.")
    board_index: int = Field(description="0-based position of the board in the file.")


class UnitTestedEvent(_Wire):
    """`unit_tested` as the result_files adapter sends it: one tested board (a retest is a new event).
    With `source.sha256` + `source.board_index` MES recognises a result re-sent after a crash."""

    type: Literal["unit_tested"]
    serial: str
    result: TestResult
    raw_result: str
    test_method: Literal["ict", "fpt", "fct", "bst"]
    program: str | None
    program_revision: str | None
    tester: str | None
    operator: str | None
    started: str | None = Field(description="UTC ISO-8601 (tester-local times are converted).")
    ended: str | None
    board_number: int | None
    panel_serial: str | None
    tests: list[TestModel]
    failed_tests: list[str]
    defects: list[dict[str, str]] = Field(description="One {test, code: test_failed} per failed test.")
    source: ResultSourceModel


class FileRejectedEvent(_Wire):
    """A tester result file that could not be read; it was moved to the `error` folder with a reason file."""

    type: Literal["file_rejected"]
    file: str
    reason: str
    line: int | None = Field(description="1-based line of the problem, when known.")
    sha256: str
    size: int


class StatusMessage(_Wire):
    schema_: Literal["emsedge/status@1"] = Field(alias="schema")
    gateway: str
    state: Literal["online", "offline"]
    ts: str
    version: str | None = None
    started_at: str | None = None
    backlog: int | None = None
    backlog_oldest_age_s: float | None = None
    drain_eta_s: float | None = None
    dropped: int | None = Field(default=None, description="Records evicted from the buffer since it was created.")
    dead_letters: int | None = Field(default=None, description="Records the broker rejected for good.")
    dropped_total: int | None = Field(
        default=None, description="Records lost by any sanctioned policy, cumulative, never reset."
    )
    dropped_total_by_equipment: dict[str, int] | None = Field(
        default=None, description="dropped_total per equipment."
    )
