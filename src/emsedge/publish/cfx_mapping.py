"""emsedge record -> IPC-CFX (IPC-2591) envelopes and the AMQP properties the CFX SDK sets.

Pure functions, no I/O: the CFX output (`publish/cfx.py`) feeds it the payload the buffer stored and sends
what it returns. The mapping table, with one example per message, is `docs/cfx.md`.

Invariants:
* One record maps to zero or more CFX messages (a unit event to WorkStarted, the unit message,
  WorkCompleted). Each message's `UniqueID` is a UUID5 of the record's `id` and its position in that list,
  so a replayed record produces the very same UniqueIDs: a CFX receiver de-duplicates by them.
* `TransactionID` is a UUID5 of (handle, board serial): the WorkStarted, the unit message and the
  WorkCompleted of one board on one machine share it, and a replay gives the same value.
* `TimeStamp` is when the event happened (the record's `ts`), written with an explicit `+00:00` offset.
* Gateway-internal events (connection, buffer, file_rejected, collection_event) have no CFX message and
  map to nothing: they stay on MQTT only.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson

CFX_VERSION: Final = "2.1"
NAMESPACE: Final = uuid.UUID("6b0d3c1e-8f1a-5b7e-9a57-3e1f0c2d4a10")
"""UUID5 namespace of the UniqueIDs and TransactionIDs this gateway derives (fixed: replays must match)."""
CONTENT_TYPE: Final = 'application/json; charset="utf-8"'
NUMERIC_MEASUREMENT: Final = "CFX.Structures.NumericMeasurement, CFX"

Codec = Literal["json", "gzip"]

STATION_STATE_CHANGED: Final = "CFX.ResourcePerformance.StationStateChanged"
FAULT_OCCURRED: Final = "CFX.ResourcePerformance.FaultOccurred"
FAULT_CLEARED: Final = "CFX.ResourcePerformance.FaultCleared"
MATERIALS_INSTALLED: Final = "CFX.Production.Assembly.MaterialsInstalled"
UNITS_PROCESSED: Final = "CFX.Production.Processing.UnitsProcessed"
UNITS_INSPECTED: Final = "CFX.Production.TestAndInspection.UnitsInspected"
UNITS_TESTED: Final = "CFX.Production.TestAndInspection.UnitsTested"
COMPONENTS_PLACED: Final = "CFX.ResourcePerformance.SMTPlacement.ComponentsPlaced"
WORK_STARTED: Final = "CFX.Production.WorkStarted"
WORK_COMPLETED: Final = "CFX.Production.WorkCompleted"
PROCESS_DATA_RECORDED: Final = "CFX.ResourcePerformance.ProcessDataRecorded"
ENDPOINT_CONNECTED: Final = "CFX.EndpointConnected"
ENDPOINT_SHUTTING_DOWN: Final = "CFX.EndpointShuttingDown"
HEARTBEAT: Final = "CFX.Heartbeat"

_SEVERITY: Final = {
    "information": "Information",
    "info": "Information",
    "warning": "Warning",
    "error": "Error",
    "alarm": "Alarm",
}
_RESULT: Final = {"pass": "Passed", "fail": "Failed", "error": "Error", "aborted": "Aborted"}
_TEST_METHOD: Final = {"ict": "ICT", "fpt": "FPT", "fct": "FCT", "bst": "BST"}
_INSPECTION_METHOD: Final = {"aoi": "AOI", "spi": "SPI", "axi": "AXI"}


@dataclass(frozen=True, slots=True)
class CfxMessage:
    """One CFX envelope and the AMQP properties it travels with (as `AmqpUtilities.SetHeaders` sets them)."""

    envelope: dict[str, Any]
    body: bytes
    """The encoded envelope (UTF-8 JSON, or gzip of it)."""
    subject: str
    """`<Source>.<MessageName>`: a topic exchange routes by it."""
    content_encoding: str | None
    application_properties: dict[str, str | None]

    @property
    def unique_id(self) -> str:
        return str(self.envelope["UniqueID"])

    @property
    def message_name(self) -> str:
        return str(self.envelope["MessageName"])


def unique_id(record_id: str, index: int) -> str:
    """UniqueID of the `index`-th CFX message made from record `record_id`: the same on every replay."""
    return str(uuid.uuid5(NAMESPACE, f"{record_id}/{index}"))


def transaction_id(handle: str, serial: str) -> str:
    """TransactionID of one board on one machine: ties WorkStarted, the unit message and WorkCompleted."""
    return str(uuid.uuid5(NAMESPACE, f"transaction/{handle}/{serial}"))


def cfx_timestamp(ts: str) -> str:
    """emsedge's `...Z` UTC time as CFX writes it: ISO-8601 with an explicit offset."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).isoformat(timespec="milliseconds")


def time_span(seconds: float | None) -> str:
    """.NET TimeSpan as Newtonsoft writes it: `hh:mm:ss` (`d.hh:mm:ss` beyond a day)."""
    total = max(round(seconds or 0.0), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}.{text}" if days else text


def envelope(
    message_name: str,
    body: dict[str, Any],
    *,
    source: str,
    timestamp: str,
    unique: str,
    target: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """A CFX envelope (`CFXEnvelope.cs`), field order as the SDK serialises it."""
    return {
        "MessageName": message_name,
        "Version": CFX_VERSION,
        "TimeStamp": timestamp,
        "UniqueID": unique,
        "Source": source,
        "Target": target,
        "RequestID": request_id,
        "MessageBody": body,
    }


def to_message(env: dict[str, Any], codec: Codec) -> CfxMessage:
    """Encode an envelope and derive its AMQP properties."""
    data = orjson.dumps(env)
    if codec == "gzip":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    name = env["MessageName"]
    return CfxMessage(
        envelope=env,
        body=data,
        subject=f"{env['Source']}.{name}",
        content_encoding="gzip" if codec == "gzip" else None,
        application_properties={
            "cfx-topic": name.rpartition(".")[0],
            "cfx-message": name,
            "cfx-handle": env["Source"],
            "cfx-target": env["Target"],
        },
    )


def _value(entry: Any) -> Any:
    """A `values` entry is `{value, unit}` (trigger snapshot) or a plain value (SECS report)."""
    return entry.get("value") if isinstance(entry, dict) and "value" in entry else entry


def _unit(entry: Any) -> str | None:
    return entry.get("unit") if isinstance(entry, dict) else None


def _unit_result(result: Any) -> str:
    return _RESULT.get(str(result).lower(), "Passed" if result in (True, "ok", "OK", "good") else "Failed")


def _station_state(ev: dict[str, Any]) -> dict[str, Any] | None:
    if ev.get("state") is None:
        return None  # a value the config's map does not know: CFX has no "unknown" state; MQTT carries it
    return {
        "OldState": str(ev["old_state"]) if ev.get("old_state") is not None else str(ev["state"]),
        "OldStateDuration": time_span(ev.get("old_state_duration_s")),
        "NewState": str(ev["state"]),
        "RelatedFault": None,
    }


def _fault(ev: dict[str, Any], occurred_at: str) -> dict[str, Any]:
    code = ev.get("fault_code", ev.get("alid"))
    return {
        "Cause": "MechanicalFailure",  # the SDK's default: a legacy alarm does not say its cause
        "Severity": _SEVERITY.get(str(ev.get("severity", "")).lower(), "Error"),
        "FaultCode": None if code is None else str(code),
        "FaultOccurrenceId": str(ev["fault_occurrence_id"]).lower(),
        "Lane": None,
        "Stage": None,
        "Description": ev.get("text", ev.get("altx")),
        "OccurredAt": occurred_at,
    }


def _numeric(m: dict[str, Any], index: int, recorded: str | None) -> dict[str, Any]:
    value = m.get("value")
    return {
        "$type": NUMERIC_MEASUREMENT,
        "MeasurementName": m.get("name"),
        "TimeRecorded": recorded,
        "Sequence": index,
        "Result": _RESULT.get(str(m.get("result")).lower(), "Passed") if m.get("result") else None,
        "MeasuredValue": {
            "Value": value if isinstance(value, (int, float)) else None,
            "ValueUnits": m.get("unit"),
            "ExpectedValue": m.get("nominal"),
            "MinimumAcceptableValue": m.get("low"),
            "MaximumAcceptableValue": m.get("high"),
        },
    }


def _values_as_measurements(values: Any, recorded: str) -> list[dict[str, Any]]:
    if not isinstance(values, dict):
        return []
    out = []
    for i, (name, entry) in enumerate(sorted(values.items()), start=1):
        value = _value(entry)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(_numeric({"name": name, "value": value, "unit": _unit(entry)}, i, recorded))
    return out


def _tests(ev: dict[str, Any], recorded: str) -> list[dict[str, Any]]:
    tests = ev.get("tests")
    if isinstance(tests, list):
        return [
            {
                "TestName": t.get("name"),
                "TestStartTime": cfx_timestamp(ev["started"]) if ev.get("started") else None,
                "TestEndTime": cfx_timestamp(ev["ended"]) if ev.get("ended") else recorded,
                "Result": _unit_result(t.get("result")),
                "Measurements": [
                    _numeric(m, i, recorded) for i, m in enumerate(t.get("measurements") or [], start=1)
                ],
                "SymptomsFound": [],
                "DefectsFound": [],
            }
            for t in tests
        ]
    measurements = ev.get("measurements")
    if isinstance(measurements, list):
        numeric = [_numeric(m, i, recorded) for i, m in enumerate(measurements, start=1) if isinstance(m, dict)]
    else:
        numeric = _values_as_measurements(ev.get("values"), recorded)
    return [
        {
            "TestName": "overall",
            "TestStartTime": None,
            "TestEndTime": recorded,
            "Result": _unit_result(ev.get("result")),
            "Measurements": numeric,
            "SymptomsFound": [],
            "DefectsFound": [],
        }
    ]


def _defects(ev: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "DefectCode": d.get("code"),
            "ComponentOfInterest": {"ReferenceDesignator": d["refdes"]} if d.get("refdes") else None,
            "Description": d.get("test"),
        }
        for d in ev.get("defects") or []
        if isinstance(d, dict)
    ]


def _position(ev: dict[str, Any]) -> int:
    n = ev.get("board_number")
    return n if isinstance(n, int) else 1


def _materials(ev: dict[str, Any], serial: str) -> list[dict[str, Any]]:
    """`values` keyed `<location>_reel_id` / `<location>_part_number` (the profiles' naming) -> one
    InstalledMaterial per location; anything else is not material data and is left out."""
    raw = ev.get("values")
    values: dict[str, Any] = raw if isinstance(raw, dict) else {}
    locations: dict[str, dict[str, Any]] = {}
    for key, entry in sorted(values.items()):
        for suffix, field in (("_reel_id", "UniqueIdentifier"), ("_part_number", "InternalPartNumber")):
            if key.endswith(suffix):
                locations.setdefault(key[: -len(suffix)], {})[field] = _value(entry)
    return [
        {
            "UnitIdentifier": serial,
            "UnitPositionNumber": _position(ev),
            "QuantityInstalled": 1,
            "Material": {
                "UniqueIdentifier": fields.get("UniqueIdentifier"),
                "InternalPartNumber": fields.get("InternalPartNumber"),
            },
            "CarrierLocation": {"LocationIdentifier": location, "LocationName": location},
            "InstalledComponents": [],
        }
        for location, fields in locations.items()
    ]


def _unit_body(kind: str, ev: dict[str, Any], tx: str, serial: str, recorded: str) -> tuple[str, dict[str, Any]]:
    if kind == "unit_processed":
        return UNITS_PROCESSED, {
            "TransactionId": tx,
            "OverallResult": "Succeeded",
            "CommonProcessData": None,
            "UnitProcessData": [
                {"UnitIdentifier": serial, "UnitPositionNumber": _position(ev), "UnitProcessData": None}
            ],
            "Readings": _values_as_measurements(ev.get("values"), recorded),
        }
    if kind == "unit_inspected":
        return UNITS_INSPECTED, {
            "TransactionId": tx,
            "InspectionMethod": _INSPECTION_METHOD.get(str(ev.get("inspection_method", "aoi")).lower(), "AOI"),
            "Inspector": None,
            "RecipeName": ev.get("program"),
            "InspectedUnits": [
                {
                    "UnitIdentifier": serial,
                    "UnitPositionNumber": _position(ev),
                    "OverallResult": _unit_result(ev.get("result")),
                    "Inspections": [],
                    "Defects": _defects(ev),
                }
            ],
        }
    if kind == "unit_tested":
        operator = ev.get("operator")
        return UNITS_TESTED, {
            "TransactionId": tx,
            "TestMethod": _TEST_METHOD.get(str(ev.get("test_method", "")).lower(), "Automated"),
            "Tester": {"OperatorIdentifier": operator} if operator else None,
            "RecipeName": ev.get("program"),
            "RecipeRevision": ev.get("program_revision"),
            "TestedUnits": [
                {
                    "UnitIdentifier": serial,
                    "UnitPositionNumber": _position(ev),
                    "OverallResult": _unit_result(ev.get("result")),
                    "Tests": _tests(ev, recorded),
                    "Symptoms": [],
                    "Defects": _defects(ev),
                }
            ],
        }
    return MATERIALS_INSTALLED, {"TransactionId": tx, "InstalledMaterials": _materials(ev, serial)}


def _work_result(result: Any, failed: bool) -> str:
    """WorkResult of the board's work on this machine: Completed, or Failed/Aborted as the unit result says."""
    if not failed:
        return "Completed"
    return "Aborted" if result == "aborted" else "Failed"


UNIT_EVENTS: Final = frozenset({"unit_processed", "unit_inspected", "unit_tested", "materials_installed"})


def map_record(record: Mapping[str, Any], handle: str) -> list[dict[str, Any]]:
    """The CFX envelopes for one decoded emsedge message (`id`, `ts`, `event` or `readings`); [] for none."""
    rid = str(record["id"])
    stamp = cfx_timestamp(str(record["ts"]))
    out: list[tuple[str, dict[str, Any], str]] = []  # (name, body, timestamp)
    if "readings" in record:
        readings = record["readings"] or []
        out.append(
            (
                PROCESS_DATA_RECORDED,
                {
                    "TransactionID": None,
                    "RecordedData": {
                        "$type": "CFX.Structures.ProcessData, CFX",
                        "Readings": [
                            {
                                "Name": r.get("signal"),
                                "Value": r.get("value"),
                                "ValueUnits": r.get("unit"),
                                "Quality": r.get("quality"),
                                "TimeRecorded": cfx_timestamp(r["ts"]) if r.get("ts") else stamp,
                            }
                            for r in readings
                        ],
                    },
                },
                stamp,
            )
        )
    else:
        ev = record.get("event") or {}
        kind = ev.get("type")
        if kind == "station_state_changed":
            body = _station_state(ev)
            if body is not None:
                out.append((STATION_STATE_CHANGED, body, stamp))
        elif kind == "fault_occurred" and ev.get("fault_occurrence_id"):
            out.append((FAULT_OCCURRED, {"Fault": _fault(ev, stamp)}, stamp))
        elif kind == "fault_cleared" and ev.get("fault_occurrence_id"):
            out.append(
                (FAULT_CLEARED, {"FaultOccurrenceId": str(ev["fault_occurrence_id"]).lower(), "Operator": None}, stamp)
            )
        elif kind == "components_placed":
            values = ev.get("values") or {}
            placed = _value(values.get("placed", values.get("components_placed"))) if isinstance(values, dict) else None
            out.append(
                (
                    COMPONENTS_PLACED,
                    {
                        "StartTime": stamp,
                        "EndTime": stamp,
                        "TotalComponentsPlaced": placed if isinstance(placed, int) else 0,
                        "TotalComponentsNotPlaced": 0,
                    },
                    stamp,
                )
            )
        elif kind in UNIT_EVENTS and ev.get("serial"):
            serial = str(ev["serial"])
            tx = transaction_id(handle, serial)
            started = cfx_timestamp(ev["started"]) if ev.get("started") else stamp
            name, body = _unit_body(kind, ev, tx, serial, stamp)
            unit = {"UnitIdentifier": serial, "PositionNumber": _position(ev), "PositionName": None}
            out.append(
                (
                    WORK_STARTED,
                    {
                        "TransactionID": tx,
                        "Lane": None,
                        "UnitCount": 1,
                        "Units": [unit],
                        "PrimaryIdentifier": ev.get("panel_serial") or serial,
                        "HermesIdentifier": None,
                        "RecipeName": ev.get("program"),
                    },
                    started,
                )
            )
            out.append((name, body, stamp))
            failed = _unit_result(ev.get("result")) in ("Failed", "Error", "Aborted") and kind != "materials_installed"
            out.append(
                (
                    WORK_COMPLETED,
                    {
                        "TransactionID": tx,
                        "Result": _work_result(ev.get("result"), failed),
                        "PrimaryIdentifier": ev.get("panel_serial") or serial,
                        "HermesIdentifier": None,
                        "UnitCount": 1,
                        "Units": [unit],
                        "PerformanceImpacts": [],
                    },
                    stamp,
                )
            )
    return [
        envelope(name, body, source=handle, timestamp=ts, unique=unique_id(rid, i))
        for i, (name, body, ts) in enumerate(out)
    ]


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The stored MQTT payload (emsedge JSON) as a dict."""
    value = orjson.loads(payload)
    if not isinstance(value, dict):
        raise TypeError("an emsedge payload is a JSON object")
    return value


def heartbeat(
    handle: str, period_s: float, active_faults: list[dict[str, Any]], *, now: str, unique: str
) -> dict[str, Any]:
    """CFX.Heartbeat (`Heartbeat.cs`): sent every `period_s` per handle, with the faults still active."""
    return envelope(
        HEARTBEAT,
        {
            "CFXHandle": handle,
            "HeartbeatFrequency": time_span(period_s),
            "ActiveFaults": active_faults,
            "ActiveRecipes": [],
            "Metadata": None,
        },
        source=handle,
        timestamp=now,
        unique=unique,
    )


def endpoint_connected(
    handle: str, *, request_uri: str | None, now: str, unique: str, vendor: str = "emsedge", model: str = ""
) -> dict[str, Any]:
    """CFX.EndpointConnected: the gateway speaks for `handle`; `RequestNetworkUri` is the listener, if any."""
    return envelope(
        ENDPOINT_CONNECTED,
        {
            "CFXHandle": handle,
            "RequestNetworkUri": request_uri,
            "RequestTargetAddress": handle if request_uri else None,
            "Vendor": vendor,
            "ModelNumber": model,
            "SerialNumber": None,
            "SoftwareVersion": None,
        },
        source=handle,
        timestamp=now,
        unique=unique,
    )


def endpoint_shutting_down(handle: str, *, now: str, unique: str) -> dict[str, Any]:
    return envelope(ENDPOINT_SHUTTING_DOWN, {"CFXHandle": handle}, source=handle, timestamp=now, unique=unique)
