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

import time
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
    whole = int(ts)
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
