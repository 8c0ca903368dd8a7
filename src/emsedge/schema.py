"""The MES contract: what goes over MQTT (JSON, UTF-8), versioned.

Two layers live here:

* `Record` and the builders `telemetry()` / `event()` are what adapters hand to the pipeline. Readings
  are plain dicts built by `reading()`, deliberately not pydantic models: the hot path builds thousands
  of readings per second and must not validate each one. Event bodies are rare (a board, a fault, a state
  change) and `event()` builds every one through its pydantic model (`EVENT_MODELS`), which also
  normalises what sources disagree on: `fault_code` is a string, `severity` one of `Severity`, `defects`
  a list of `{refdes, code, text}` objects, a fault's text in `text`. The body cannot drift from the contract.
* The pydantic models (`TelemetryMessage`, `EventMessage`, `StatusMessage`, `EquipmentStateMessage`)
  are the contract: `emsedge contract-schema` prints their JSON Schemas, `docs/asyncapi.yaml` is
  generated from them (emsedge.contract), and the tests validate real traffic and the examples of
  `docs/mqtt-contract.md` against them.

Versions: `emsedge/event@2` replaced `@1` when `defects` became objects (strings before), `fault_code`
a string (a number from some sources) and `severity` a name (a number from OPC UA): type changes of
existing fields are breaking. Telemetry and status are unchanged at `@1`.

Compact telemetry (`emsedge/telemetry-compact@1`, opt-in with `mqtt.telemetry_format: compact`) is the same
message written shorter: readings as `{signal: value}` that inherit the envelope's `ts`, `good` quality and
the unit of the equipment's retained `emsedge/meta@1` message; only what differs goes into `x`.
`encode_compact()` writes it from a record (the buffer's encoder then), `compact_telemetry()` from a full
message; `expand_compact()` (the reference decoder) gives the full message back, field for field.

`encode()` turns a `Record` into the final payload bytes once it has its `id` and `seq` (assigned by the
buffer inside the transaction that makes it durable, so `seq` is strictly increasing and persisted).
"""

from __future__ import annotations

import hashlib
import math
import reprlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from operator import itemgetter
from typing import Annotated, Any, Literal, Protocol, overload

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_TELEMETRY = "emsedge/telemetry@1"
SCHEMA_EVENT = "emsedge/event@2"
SCHEMA_STATUS = "emsedge/status@1"
SCHEMA_STATE = "emsedge/state@1"
SCHEMA_TELEMETRY_COMPACT = "emsedge/telemetry-compact@1"
SCHEMA_META = "emsedge/meta@1"

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
    UNITS_MISSED = "units_missed"  # gateway's own: a board counter shows boards that passed unseen
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


class PollReadings(Sequence[dict[str, Any]]):
    """The readings of one poll whose readings are all plain good ones (the five fields, the poll's `ts`,
    `good` quality, the signal's configured unit), kept as columns: `names`, `units`, `values`.

    Reads as the list of reading dicts it stands for, built once, when something first reads them (the full
    encoder, a trigger, a status page fold), so every consumer of `body["readings"]` works unchanged. The
    compact encoder takes `v` straight from the columns, and the status page files the whole poll in O(1):
    a 1,000-signal poll then costs no dict per value. Why: per-value dicts were the largest cost of the
    gateway's own hot path (py-spy, 10 machines x 1,000 signals at 100 ms). Consumers never modify readings
    (a stage that changes them builds a new list), which keeps the columns and the dicts the same.
    """

    __slots__ = ("_dicts", "names", "ts", "units", "values")

    def __init__(self, names: tuple[str, ...], units: tuple[str | None, ...], values: list[Any], ts: str) -> None:
        if not len(names) == len(units) == len(values):
            raise ValueError("names, units and values of a poll differ in length")
        self.names, self.units, self.values, self.ts = names, units, values, ts
        self._dicts: list[dict[str, Any]] | None = None

    def dicts(self) -> list[dict[str, Any]]:
        """The readings as the list of reading dicts (built on first use, then kept)."""
        if self._dicts is None:
            ts = self.ts
            self._dicts = [{"signal": n, "value": v, "unit": u, "quality": "good", "ts": ts}
                           for n, u, v in zip(self.names, self.units, self.values, strict=True)]
        return self._dicts

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self.dicts()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.dicts())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PollReadings | list | tuple):
            return self.dicts() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence of dicts, compared by content

    def __repr__(self) -> str:
        return f"PollReadings({self.dicts()!r})"


def plain_readings(readings: Any) -> Any:
    """`readings` as a list when they are `PollReadings` (for code that needs a real list: JSON encoders)."""
    return readings.dicts() if type(readings) is PollReadings else readings


@dataclass(slots=True)
class Record:
    """One message on its way to MES, before the buffer gives it an `id` and a `seq`.

    `message_id`: the envelope `id` this record must carry, when its source can name it deterministically
    (a result file's board: the same id whenever the same result is emitted again after a crash, so MES
    de-duplicates it by `id`). A UUID in canonical form; None (the default) lets the buffer draw a uuid4.
    """

    kind: Kind
    equipment: str
    equipment_type: str
    ts: str
    body: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None

    @property
    def event_type(self) -> str | None:
        event = self.body.get("event")
        return event.get("type") if isinstance(event, dict) else None


def telemetry(equipment: str, equipment_type: str, readings: Sequence[dict[str, Any]], ts: str | None = None) -> Record:
    return Record("telemetry", equipment, equipment_type, ts or utc_iso(), {"readings": readings})


def event(
    equipment: str, equipment_type: str, type: str | EventType, ts: str | None = None, **fields: Any
) -> Record:
    """An event record; its body is built by the event type's model (`event_body`), never by hand."""
    return Record("event", equipment, equipment_type, ts or utc_iso(), {"event": event_body(type, **fields)})


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS  # device structures may be keyed by numbers


def _json_default(value: Any) -> str:
    return str(value)  # anything a device hands us that JSON has no type for (Decimal, bytes-like, enums)


class Encode(Protocol):
    """How the buffer turns a record into its payload: `encode`, or `encode_compact` against a meta."""

    def __call__(self, record: Record, *, gateway: str, seq: int, message_id: str) -> bytes: ...


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
    if type(readings := envelope.get("readings")) is PollReadings:
        envelope["readings"] = readings.dicts()
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
    readings = plain_readings(record.body.get("readings")) if record.kind == "telemetry" else None
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
# Wire models: the documented contract. `event()` builds every event body through its model, so an
# event cannot leave the gateway in a shape the contract does not describe. Telemetry readings stay plain
# dicts built by `reading()` (the hot path); `ReadingModel` describes them and the tests validate them.


class Severity(StrEnum):
    """Fault severities, the IPC-CFX `FaultSeverity` names in lower case. Every fault carries one."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


_SEVERITY_ALIASES: dict[str, Severity] = {
    "alarm": Severity.ERROR, "fault": Severity.ERROR, "fatal": Severity.CRITICAL, "emergency": Severity.CRITICAL,
    "warn": Severity.WARNING, "information": Severity.INFO, "informational": Severity.INFO, "notice": Severity.INFO,
}


def severity_of(value: Any) -> Severity:
    """One documented severity for whatever a source calls it.

    Names map case-insensitively (`alarm` is `error`, `fatal` is `critical`); OPC UA's numeric severity
    (1..1000) maps by its ranges: 801+ critical, 401+ error, 201+ warning, below info. Anything else is
    `error`: an unclassified fault is treated as one that needs attention.
    """
    if isinstance(value, Severity):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value > 800:
            return Severity.CRITICAL
        if value > 400:
            return Severity.ERROR
        if value > 200:
            return Severity.WARNING
        return Severity.INFO
    if isinstance(value, str):
        name = value.strip().lower()
        if name in Severity.__members__.values():
            return Severity(name)
        return _SEVERITY_ALIASES.get(name, Severity.ERROR)
    return Severity.ERROR


def parse_defect(defect: Any) -> dict[str, Any]:
    """A defect as the contract's object: "C12:tombstone", ["C12", "tombstone", text] or a dict."""
    if isinstance(defect, dict):
        known = {k: defect.get(k) for k in ("refdes", "code", "text")}
        if defect.get("test") is not None:
            known["test"] = defect["test"]
        return {k: None if v is None else str(v) for k, v in known.items()}
    if isinstance(defect, str):
        refdes, sep, rest = defect.partition(":")
        code, _, text = rest.partition(":")
        return {"refdes": refdes or None, "code": (code or None) if sep else None, "text": text or None}
    if isinstance(defect, list | tuple) and defect:
        parts = [None if p is None else str(p) for p in defect[:3]] + [None, None]
        return {"refdes": parts[0], "code": parts[1], "text": parts[2]}
    return {"refdes": None, "code": None if defect is None else str(defect), "text": None}


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


class Defect(_Wire):
    """One defect of an inspected or tested board."""

    refdes: str | None = Field(description="Reference designator, e.g. C12; null when the source gives none.")
    code: str | None = Field(description="Defect code, e.g. tombstone, missing, bridge.")
    text: str | None = Field(default=None, description="Free text from the machine, when it gives one.")
    test: str | None = Field(default=None, description="Name of the failed test (testers; absent otherwise).")


class _Event(BaseModel):
    """Base of the gateway's own events: only the documented fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _ConfiguredEvent(BaseModel):
    """Base of events a config emits (triggers, SECS/GEM collection events).

    Besides the documented fields they carry the trigger's or event's own keys (`trigger`, `value`,
    `previous`, `ceid`, `name`) and the constant `fields` of the config, hence extra keys are allowed.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    serial: str | None = Field(default=None, description="Board serial, when the event is about a board.")
    values: dict[str, Any] | None = Field(
        default=None,
        description="Snapshot: {name: {value, unit[, quality]}} for triggered events, {name: value} for SECS/GEM "
        "event reports.",
    )
    trigger: str | None = Field(default=None, description="Signal whose change fired a triggered event.")
    ceid: Any = Field(default=None, description="SECS/GEM collection event id of an event report.")
    name: str | None = Field(default=None, description="Name of the configured SECS/GEM event.")

    @field_validator("serial", mode="before")
    @classmethod
    def _serial_text(cls, v: Any) -> Any:
        return None if v is None else str(v)


class StationStateChanged(_ConfiguredEvent):
    """CFX.ResourcePerformance.StationStateChanged: the SEMI E58 state changed."""

    type: Literal[EventType.STATION_STATE_CHANGED]
    signal: str | None = Field(default=None, description="Signal that carries the state.")
    state: int | None = Field(description="SEMI E58 code; null when the config's map does not know the value.")
    state_name: str = Field(description="Name of the E58 state (`unknown` when state is null).")
    raw_value: Any = Field(default=None, description="The machine's own value.")
    old_state: int | None = Field(default=None, description="Previous E58 code (absent on the first state).")
    old_state_name: str | None = None
    old_state_duration_s: float | None = Field(default=None, description="How long the previous state lasted.")

    @model_validator(mode="before")
    @classmethod
    def _from_trigger(cls, data: Any) -> Any:
        """A configured station_state_changed (trigger, CEID) takes its state from the trigger value."""
        if isinstance(data, dict) and "state" not in data:
            raw = data.get("value")
            code = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1000 else None
            data = {**data, "state": code, "state_name": state_name(code) if code is not None else "unknown"}
            data.setdefault("raw_value", raw)
            data.setdefault("signal", data.get("trigger"))
        return data


class _Fault(_ConfiguredEvent):
    model_config = ConfigDict(extra="allow", frozen=True, use_enum_values=True)  # severity as a plain str

    fault_occurrence_id: str = Field(description="Links a fault_occurred to its fault_cleared.")
    fault_code: str = Field(description="The machine's fault or alarm code, always as a string.")
    text: str | None = Field(default=None, description="Human-readable fault text.")
    alid: Any = Field(default=None, description="SECS/GEM ALID (as the equipment sent it).")
    altx: str | None = Field(default=None, description="SECS/GEM ALTX.")
    alcd: int | None = Field(default=None, description="SECS/GEM ALCD byte.")
    message: str | None = Field(default=None, description="OPC UA event Message.")
    source: str | None = Field(default=None, description="OPC UA SourceName.")
    opcua_severity: int | None = Field(default=None, description="OPC UA Severity (1..1000) as the server sent it.")

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        code = data.get("fault_code")
        if code is None:
            code = data.get("alid")
        data["fault_code"] = "" if code is None else str(code)
        if data.get("text") is None:
            data["text"] = data.get("fault_text") or data.get("altx") or data.get("message")
        if "severity" in data or cls is FaultOccurred:
            data["severity"] = severity_of(data.get("severity"))
        return data


class FaultOccurred(_Fault):
    """CFX.ResourcePerformance.FaultOccurred."""

    type: Literal[EventType.FAULT_OCCURRED]
    severity: Severity = Field(description="critical | error | warning | info (IPC-CFX FaultSeverity).")


class FaultCleared(_Fault):
    """CFX.ResourcePerformance.FaultCleared: same fault_occurrence_id as its fault_occurred."""

    type: Literal[EventType.FAULT_CLEARED]
    severity: Severity | None = None


class UnitProcessed(_ConfiguredEvent):
    """CFX.Production.Processing.UnitsProcessed, e.g. a board left the reflow oven (with its zone profile)."""

    type: Literal[EventType.UNIT_PROCESSED]


class _UnitResult(_ConfiguredEvent):
    result: Literal["pass", "fail", "error", "aborted"] | None = Field(
        default=None, description="Verdict: pass or fail; a tester may also report error or aborted."
    )
    raw_result: Any = Field(default=None, description="The machine's own verdict value.")
    defects: list[Defect] | None = Field(
        default=None, description="Defects; null when the source does not report them (never [] for unknown)."
    )
    defect_count: int | None = None

    @field_validator("defects", mode="before")
    @classmethod
    def _defects(cls, v: Any) -> Any:
        if v is None:
            return None
        return [parse_defect(d) for d in (v if isinstance(v, list | tuple) else [v])]


class UnitInspected(_UnitResult):
    """CFX.Production.TestAndInspection.UnitsInspected."""

    type: Literal[EventType.UNIT_INSPECTED]


class UnitTested(_UnitResult):
    """CFX.Production.TestAndInspection.UnitsTested."""

    type: Literal[EventType.UNIT_TESTED]
    measurements: Any = None


class MaterialsInstalled(_ConfiguredEvent):
    """CFX.Production.Assembly.MaterialsInstalled: reels, lots and part numbers used for a board."""

    type: Literal[EventType.MATERIALS_INSTALLED]


class ComponentsPlaced(_ConfiguredEvent):
    """CFX.ResourcePerformance.SMTPlacement.ComponentsPlaced: placement counters."""

    type: Literal[EventType.COMPONENTS_PLACED]


class CollectionEvent(_Event):
    """An S6F11 event report for a CEID the config does not map."""

    type: Literal[EventType.COLLECTION_EVENT]
    ceid: Any
    values: dict[str, Any]


class ConnectionLost(_Event):
    type: Literal[EventType.CONNECTION_LOST]
    reason: str = Field(description="Why the gateway lost the machine.")


class ConnectionRestored(_Event):
    type: Literal[EventType.CONNECTION_RESTORED]


class BufferDropped(BaseModel):
    """Records the gateway evicted or lost before delivery (announced, never itself evicted)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal[EventType.BUFFER_DROPPED]
    count: int
    by_equipment: dict[str, int] | None = None
    first_ts: str | None = None
    last_ts: str | None = None
    reason: str | None = None
    by_reason: dict[str, int] | None = Field(default=None, description="count per loss reason.")
    dropped_seqs: list[list[int]] | None = Field(default=None, description="[[first, last], ...] seqs that are gone.")
    dropped_total: int | None = Field(default=None, description="Cumulative loss count of the gateway.")
    dropped_total_by_equipment: dict[str, int] | None = None
    max_bytes: int | None = None
    max_age_s: float | None = None


class FileRejected(_Event):
    """A tester result file that could not be read (result_files adapter); the file is moved aside."""

    type: Literal[EventType.FILE_REJECTED]
    file: str = Field(description="File name.")
    reason: str
    line: int | None = Field(description="1-based line of the problem, or null.")
    sha256: str = Field(description="Hash of the file's content.")
    size: int = Field(description="File size in bytes.")


class Unprocessable(_Event):
    """A record that could not be encoded (undecodable bytes, nesting, an integer over 64 bits), sent in its
    place by the buffer; counted as lost with reason `unprocessable` and announced."""

    type: Literal[EventType.UNPROCESSABLE]
    original_type: str | None = Field(description="Event type (or `telemetry`) of the record it replaces.")
    signal: str = Field(description="Path of the offending value, e.g. event.fields.count.")
    reason: str
    raw: str | None = Field(description="The offending value, escaped and truncated.")


class UnitsMissed(_Event):
    """Boards passed a machine without their event: a counter jumped by more than the events seen."""

    type: Literal[EventType.UNITS_MISSED]
    count: int = Field(ge=1, description="How many boards passed unseen.")
    trigger: str = Field(description="Signal whose events are missing (e.g. board_exit_serial).")
    emit: str = Field(description="Event type that was missed for those boards (e.g. unit_processed).")
    counter: str = Field(description="Counter signal that showed the gap.")
    counter_from: int = Field(description="Counter value when the last event was seen.")
    counter_to: int = Field(description="Counter value now.")
    last_serial: str | None = Field(description="Serial of the last board seen before the gap.")
    next_serial: str | None = Field(description="Serial of the first board seen after the gap (null: none yet).")


EventBody = Annotated[
    StationStateChanged | FaultOccurred | FaultCleared | UnitProcessed | UnitInspected | UnitTested
    | MaterialsInstalled | ComponentsPlaced | CollectionEvent | ConnectionLost | ConnectionRestored
    | BufferDropped | UnitsMissed | FileRejected | Unprocessable,
    Field(discriminator="type"),
]

EVENT_MODELS: dict[str, type[BaseModel]] = {
    str(m.model_fields["type"].annotation.__args__[0]): m  # type: ignore[union-attr]
    for m in (StationStateChanged, FaultOccurred, FaultCleared, UnitProcessed, UnitInspected, UnitTested,
              MaterialsInstalled, ComponentsPlaced, CollectionEvent, ConnectionLost, ConnectionRestored,
              BufferDropped, UnitsMissed, FileRejected, Unprocessable)
}
"""Event type -> body model; every `EventType` has one (checked by a test)."""


def event_body(type: str | EventType, **fields: Any) -> dict[str, Any]:
    """The wire dict of an event body, validated and normalised by its model (raises ValueError)."""
    model = EVENT_MODELS.get(str(type))
    if model is None:
        raise ValueError(f"no contract model for event type {type!r}")
    body = model.model_validate({"type": str(type), **fields})
    out: dict[str, Any] = {"type": str(type)}
    out.update(body.model_dump(exclude_unset=True, exclude={"type"}, by_alias=True))
    return out


class _Envelope(_Wire):
    id: str = Field(description="UUID, stable across redelivery: de-duplicate by it.")
    seq: int = Field(description="Per gateway, strictly increasing, persisted across restarts: detect gaps.")
    gateway: str
    equipment: str
    equipment_type: str
    ts: str = Field(description="UTC ISO-8601 with milliseconds and Z: when it happened.")
    replayed: bool | None = Field(default=None, description="true when delivered from the backlog.")


class TelemetryMessage(_Envelope):
    """`{prefix}/{equipment}/telemetry`: the readings of one poll or publishing cycle."""

    schema_: Literal["emsedge/telemetry@1"] = Field(alias="schema")
    readings: list[ReadingModel]


class EventMessage(_Envelope):
    """`{prefix}/{equipment}/events`: one event."""

    schema_: Literal["emsedge/event@2"] = Field(alias="schema")
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
    defects: list[Defect] = Field(
        description="One {refdes: null, code: test_failed, text: null, test} per failed test."
    )
    source: ResultSourceModel


FileRejectedEvent = FileRejected
"""The result_files adapter's name for the `file_rejected` body model."""


class StatusMessage(_Wire):
    """`{prefix}/_gateway/status` (retained): the gateway is online or offline."""

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
    cause: Literal["stopped", "connection_lost"] | None = Field(
        default=None, description=(
            "offline only: `stopped` (a clean stop; `ts` is when it stopped) or `connection_lost` (the last will; "
            "`ts` is when the lost connection was made: the gateway was alive at least until then)."
        ),
    )
    status_interval_s: float | None = Field(
        default=None, description="Seconds between refreshes of the online status (`mqtt.status_interval`)."
    )
    equipment_total: int | None = Field(default=None, description="Equipment in the config (enabled or not).")
    equipment_connected: int | None = Field(
        default=None, description="Equipment whose session currently delivers (state `connected`)."
    )
    equipment_by_state: dict[str, int] | None = Field(
        default=None, description="Equipment count per state (connecting, connected, retrying, failed, disabled)."
    )


class ActiveFault(_Wire):
    fault_occurrence_id: str
    fault_code: str
    text: str | None = None
    severity: Severity
    since: str = Field(description="ts of the fault_occurred event.")


class LastBoard(_Wire):
    serial: str
    event: str = Field(description="Event type that named it (unit_processed, unit_inspected, ...).")
    ts: str


class EquipmentStateMessage(_Wire):
    """`{prefix}/{equipment}/state` (retained): the machine's current state, for subscribers that join late.

    Published on every change; an empty retained message clears it when the machine leaves the config.
    """

    schema_: Literal["emsedge/state@1"] = Field(alias="schema")
    gateway: str
    equipment: str
    equipment_type: str
    ts: str = Field(description="When this state was last updated.")
    connection: Literal["connecting", "connected", "retrying", "failed", "disabled"] = Field(
        description="The gateway's link to the machine (the supervisor's EquipmentState)."
    )
    station_state: int | None = Field(description="SEMI E58 code of the last station_state_changed; null: none yet.")
    station_state_name: str | None = None
    station_state_since: str | None = None
    active_faults: list[ActiveFault]
    last_board: LastBoard | None


# ---------------------------------------------------------------------------------------------------
# Compact telemetry (`mqtt.telemetry_format: compact`): the full message written shorter, losslessly.
#
# A compact message is the full envelope (every top-level field except `schema` and `readings`, verbatim)
# plus `meta` (the id of the equipment's retained meta message it was written against), `v` (signal ->
# value, in the order of the full readings) and, only when some reading differs from the defaults, `x`
# (signal -> the reading's fields that differ). The defaults of a reading are: `ts` the envelope's,
# `quality` good, `unit` the meta's unit of that signal (null when the meta does not name the signal).
# `expand_compact(compact_telemetry(m, meta), meta) == m` for every full telemetry message `m` it accepts;
# a message it cannot write this way (a signal named twice, a reading without its five fields, a top-level
# `meta`/`v`/`x`) stays in the full form: read the `schema` of each message.

_IDENTITY = frozenset({"signal", "value"})
_COMPACT_RESERVED = frozenset({"meta", "v", "x"})
_GOOD = str(Quality.GOOD)


@dataclass(frozen=True, slots=True)
class TelemetryMeta:
    """What every reading of one equipment has in common (from the config), sent once, retained.

    `id` is a hash of the equipment, its type and `signals`: a compact message names the meta it was
    written against, so a decoder holding a different one knows instead of guessing (`expand_compact`
    refuses it)."""

    equipment: str
    equipment_type: str
    signals: dict[str, dict[str, Any]]
    id: str
    units: dict[str, Any] = field(init=False, repr=False, compare=False)
    regular_columns: tuple[tuple[str, ...], tuple[str | None, ...]] | None = field(
        default=None, init=False, repr=False, compare=False)
    """(names, units) of `PollReadings` columns found to match this meta's units (checked once, by identity)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", {name: entry.get("unit") for name, entry in self.signals.items()})

    @classmethod
    def build(cls, equipment: str, equipment_type: str, signals: dict[str, dict[str, Any]]) -> TelemetryMeta:
        canonical = orjson.dumps({"equipment": equipment, "equipment_type": equipment_type, "signals": signals},
                                 option=orjson.OPT_SORT_KEYS)
        return cls(equipment, equipment_type, signals, hashlib.sha256(canonical).hexdigest()[:16])

    def message(self, gateway: str) -> dict[str, Any]:
        return {
            "schema": SCHEMA_META, "gateway": gateway, "equipment": self.equipment,
            "equipment_type": self.equipment_type, "meta": self.id, "signals": self.signals,
        }

    def payload(self, gateway: str) -> bytes:
        return orjson.dumps(self.message(gateway))

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> TelemetryMeta:
        """The meta as a subscriber receives it (its `meta` id is kept as sent, not recomputed)."""
        return cls(str(message["equipment"]), str(message["equipment_type"]), dict(message["signals"]),
                   str(message["meta"]))


_SIGNAL, _VALUE, _UNIT = itemgetter("signal"), itemgetter("value"), itemgetter("unit")
_QUALITY, _TS = itemgetter("quality"), itemgetter("ts")


def _compact_readings(
    readings: list[Any], ts: Any, units: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """(`v`, `x`) of a list of readings, or None when they cannot be written compactly.

    The common poll (every reading good, at the envelope's ts, in the meta's unit, nothing else) is
    checked column by column in C (`map` over item getters); any other goes through the reading loop."""
    try:
        signals = list(map(_SIGNAL, readings))
        values = dict(zip(signals, map(_VALUE, readings), strict=True))
        if (len(values) == len(readings) and set(map(type, signals)) <= {str}
                and set(map(_QUALITY, readings)) <= {_GOOD} and set(map(_TS, readings)) <= {ts}
                and set(map(len, readings)) <= {5} and list(map(_UNIT, readings)) == list(map(units.get, signals))):
            return values, {}
    except (TypeError, KeyError):  # not dicts, a reading without its fields, unhashable parts: the loop decides
        pass
    return _compact_readings_one_by_one(readings, ts, units)


def _compact_poll(readings: PollReadings, ts: str, meta: TelemetryMeta) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(`v`, no `x`) of a regular poll, from its columns; None when they do not fit `meta` (the slow path
    then decides). The units are compared once per meta and columns (the same tuples every poll)."""
    if readings.ts != ts:
        return None
    checked = meta.regular_columns
    if checked is None or checked[0] is not readings.names or checked[1] is not readings.units:
        if (len(set(readings.names)) != len(readings.names)
                or [meta.units.get(n, _NO_UNIT) for n in readings.names] != list(readings.units)):
            return None
        object.__setattr__(meta, "regular_columns", (readings.names, readings.units))
    return dict(zip(readings.names, readings.values, strict=True)), {}


_NO_UNIT = object()


def _compact_readings_one_by_one(
    readings: list[Any], ts: Any, units: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    values: dict[str, Any] = {}
    exceptions: dict[str, dict[str, Any]] = {}
    for r in readings:
        try:
            signal, quality, rts, unit = r["signal"], r["quality"], r["ts"], r["unit"]
            if not isinstance(signal, str) or signal in values or "value" not in r:
                return None
        except (TypeError, KeyError):  # not a dict, or a reading without its five fields
            return None
        values[signal] = r["value"]
        meta_unit = units.get(signal)
        if quality == _GOOD and rts == ts and unit == meta_unit and len(r) == 5:
            continue  # nothing to say beyond the value
        differs = {k: v for k, v in r.items() if k not in _IDENTITY}
        if quality == _GOOD:
            del differs["quality"]
        if rts == ts:
            del differs["ts"]
        if unit == meta_unit:
            del differs["unit"]
        if differs:
            exceptions[signal] = differs
    return values, exceptions


def compact_telemetry(message: dict[str, Any], meta: TelemetryMeta) -> dict[str, Any] | None:
    """The compact form of a full telemetry message (decoded), or None when it must stay full."""
    readings = message.get("readings")
    if message.get("schema") != SCHEMA_TELEMETRY or not isinstance(readings, list):
        return None
    if _COMPACT_RESERVED & message.keys():
        return None
    compacted = _compact_readings(readings, message.get("ts"), meta.units)
    if compacted is None:
        return None
    out = {k: v for k, v in message.items() if k != "readings"}
    out["schema"] = SCHEMA_TELEMETRY_COMPACT
    out["meta"] = meta.id
    out["v"], x = compacted
    if x:
        out["x"] = x
    return out


def compact_payload(payload: bytes, meta: TelemetryMeta) -> bytes:
    """`payload` (an encoded full telemetry message) in the compact form, or unchanged when it must stay full."""
    message = orjson.loads(payload)
    compact = compact_telemetry(message, meta) if isinstance(message, dict) else None
    if compact is None:
        return payload
    return orjson.dumps(compact, default=_json_default, option=_ORJSON_OPTIONS)


def encode_compact(record: Record, *, gateway: str, seq: int, message_id: str, meta: TelemetryMeta | None) -> bytes:
    """`encode()` with telemetry written compact against `meta` (what the buffer stores with
    `mqtt.telemetry_format: compact`); events, and telemetry that cannot be written compactly or has no
    meta, are encoded in the full form. `expand_compact(result, meta)` is `encode(record, ...)`, decoded."""
    readings = record.body.get("readings")
    poll = readings if type(readings) is PollReadings else None
    listed = poll is not None or isinstance(readings, list)
    if meta is None or record.kind != "telemetry" or len(record.body) != 1 or not listed:
        return encode(record, gateway=gateway, seq=seq, message_id=message_id)
    compacted = _compact_poll(poll, record.ts, meta) if poll is not None else None
    if compacted is None:
        compacted = _compact_readings(plain_readings(readings), record.ts, meta.units)
    if compacted is None:
        return encode(record, gateway=gateway, seq=seq, message_id=message_id)
    message: dict[str, Any] = {
        "schema": SCHEMA_TELEMETRY_COMPACT, "id": message_id, "seq": seq, "gateway": gateway,
        "equipment": record.equipment, "equipment_type": record.equipment_type, "ts": record.ts,
        "meta": meta.id, "v": compacted[0],
    }
    if compacted[1]:
        message["x"] = compacted[1]
    return orjson.dumps(message, default=_json_default, option=_ORJSON_OPTIONS)


def compact_meta_id(payload: bytes) -> str | None:
    """The `meta` id of an encoded compact telemetry message, read without parsing it (None: not compact).

    Safe on the encoder's own output: `meta` follows the envelope, whose string values cannot hold an
    unescaped quote, so the first `,"meta":"` is the key."""
    if not payload.startswith(b'{"schema":"' + SCHEMA_TELEMETRY_COMPACT.encode() + b'"'):
        return None
    at = payload.find(b',"meta":"')
    if at < 0:
        return None
    start = at + 9
    end = payload.find(b'"', start)
    return payload[start:end].decode() if end > start else None


def expand_payload(payload: bytes, meta: TelemetryMeta) -> bytes:
    """An encoded compact telemetry message as the encoded full one (for outputs that need the full form)."""
    return orjson.dumps(expand_compact(orjson.loads(payload), meta), default=_json_default, option=_ORJSON_OPTIONS)


def expand_compact(message: dict[str, Any], meta: TelemetryMeta | dict[str, Any]) -> dict[str, Any]:
    """The reference decoder: a compact telemetry message back in the full form (`emsedge/telemetry@1`).

    `meta` is the equipment's retained meta message (decoded) or a `TelemetryMeta`; raises ValueError when
    the message was written against another meta (its `meta` id differs) or is not compact telemetry."""
    if message.get("schema") != SCHEMA_TELEMETRY_COMPACT:
        raise ValueError(f"not a compact telemetry message: schema {message.get('schema')!r}")
    if isinstance(meta, dict):
        meta = TelemetryMeta.from_message(meta)
    if message.get("meta") != meta.id:
        raise ValueError(f"message written against meta {message.get('meta')!r}, not {meta.id!r}")
    ts = message["ts"]
    exceptions: dict[str, dict[str, Any]] = message.get("x") or {}
    units = meta.units
    readings = [{"signal": signal, "value": value, "unit": units.get(signal), "quality": _GOOD, "ts": ts}
                for signal, value in message["v"].items()]
    for r in readings if exceptions else ():
        differs = exceptions.get(r["signal"])
        if differs:
            r.update(differs)
    out = {k: v for k, v in message.items() if k not in _COMPACT_RESERVED}
    out["schema"] = SCHEMA_TELEMETRY
    out["readings"] = readings
    return out


class CompactTelemetryMessage(_Envelope):
    """`{prefix}/{equipment}/telemetry` with `mqtt.telemetry_format: compact`: the readings of one poll,
    written against the equipment's retained meta (see `expand_compact` for the full form)."""

    schema_: Literal["emsedge/telemetry-compact@1"] = Field(alias="schema")
    meta: str = Field(description="Id of the equipment's meta message (`{prefix}/{equipment}/meta`) it was "
                      "written against: units come from there.")
    v: dict[str, Any] = Field(
        description="signal -> value, in the order of the readings; each reading has the envelope's `ts`, "
        "quality `good` and the meta's unit unless `x` says otherwise."
    )
    x: dict[str, CompactException] | None = Field(
        default=None, description="signal -> the fields of its reading that differ from those defaults."
    )


class CompactException(_Wire):
    """The fields of one compact reading that differ from the defaults (absent: the default holds)."""

    unit: str | None = Field(default=None, description="Unit, when it is not the meta's (null: no unit).")
    quality: Quality | None = Field(default=None, description="uncertain or bad (good is the default).")
    ts: str | None = Field(default=None, description="When the value was sampled, when not the envelope's ts.")
    status: str | None = None
    server_ts: str | None = None
    reason: str | None = None
    raw: str | None = None


CompactTelemetryMessage.model_rebuild()


class SignalMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    unit: str | None = Field(description="Unit of every reading of this signal unless a message says otherwise.")
    type: str | None = Field(default=None, description="Data type in the equipment (e.g. float32, uint16), "
                             "when the adapter's config names one.")


class TelemetryMetaMessage(_Wire):
    """`{prefix}/{equipment}/meta` (retained, with `mqtt.telemetry_format: compact`): what the compact
    telemetry of one equipment leaves out. Published before the first compact message that names it, on
    every connection; an empty retained message clears it when the machine leaves the config."""

    schema_: Literal["emsedge/meta@1"] = Field(alias="schema")
    gateway: str
    equipment: str
    equipment_type: str
    meta: str = Field(description="Id of this meta (a hash of equipment, equipment_type and signals), named by "
                      "each compact message.")
    signals: dict[str, SignalMeta] = Field(description="signal name -> what its readings have in common.")
