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
GENERIC_PROCESS_DATA: Final = "CFX.Structures.Generic.GenericProcessData, CFX"
"""The SDK's (2.1) ProcessData for equipment without a process-specific structure: Readings (numeric, as
`GenericValue{Name, Value: NumericValue}`) and Parameters (text, as `GenericParameter{Name, Value}`)."""

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
_PROCESSING_RESULT: Final = {"fail": "Failed", "failed": "Failed", "error": "Error", "aborted": "Aborted",
                             "skipped": "Skipped"}


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_value(value: float, unit: Any, m: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`NumericValue` (`Structures/NumericValue.cs`); the SDK's `Value` is a double, never null."""
    m = m or {}
    return {
        "Value": value,
        "ValueUnits": unit,
        "ExpectedValue": m.get("nominal"),
        "MinimumAcceptableValue": m.get("low"),
        "MaximumAcceptableValue": m.get("high"),
    }


def _measurement_result(m: Mapping[str, Any]) -> str:
    """`Measurement.Result` is a non-nullable `TestResult`: the given verdict, else the limits' verdict."""
    if m.get("result"):
        return _RESULT.get(str(m.get("result")).lower(), "Failed")
    value: float = m["value"]
    low: Any = m.get("low")
    high: Any = m.get("high")
    if (_is_number(low) and value < low) or (_is_number(high) and value > high):
        return "Failed"
    return "Passed"


def _numeric(m: dict[str, Any], index: int, recorded: str | None) -> dict[str, Any]:
    """`NumericMeasurement` with its `$type` (the .NET SDK cannot build the abstract Measurement without it)."""
    return {
        "$type": NUMERIC_MEASUREMENT,
        "MeasurementName": m.get("name"),
        "TimeRecorded": recorded,
        "Sequence": index,
        "Result": _measurement_result(m),
        "MeasuredValue": _numeric_value(m["value"], m.get("unit"), m),
    }


def _numeric_measurements(measurements: list[Any], recorded: str) -> list[dict[str, Any]]:
    """Only numeric measurements: the SDK's NumericValue.Value is a double (a text result stays on MQTT)."""
    numeric = [m for m in measurements if isinstance(m, dict) and _is_number(m.get("value"))]
    return [_numeric(m, i, recorded) for i, m in enumerate(numeric, start=1)]


def _values_as_measurements(values: Any, recorded: str) -> list[dict[str, Any]]:
    if not isinstance(values, dict):
        return []
    rows = [{"name": name, "value": _value(entry), "unit": _unit(entry)} for name, entry in sorted(values.items())]
    return _numeric_measurements(rows, recorded)


def generic_process_data(rows: list[tuple[Any, Any, Any]]) -> dict[str, Any]:
    """`GenericProcessData` from (name, value, unit) rows: numbers as Readings, text and booleans as
    Parameters (`GenericParameter.Value` is a string); rows without a value are left out (CFX has no
    quality or null reading: MQTT carries them)."""
    readings, parameters = [], []
    for name, value, unit in rows:
        if _is_number(value):
            readings.append({"Name": name, "Value": _numeric_value(value, unit)})
        elif isinstance(value, bool):
            parameters.append({"Name": name, "Value": "true" if value else "false"})
        elif value is not None:
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            parameters.append({"Name": name, "Value": text})
    return {
        "$type": GENERIC_PROCESS_DATA,
        "Setpoints": [],
        "Readings": readings,
        "Parameters": parameters,
        "StageData": [],
    }


def _values_as_process_data(values: Any) -> dict[str, Any] | None:
    if not isinstance(values, dict) or not values:
        return None
    return generic_process_data([(name, _value(entry), _unit(entry)) for name, entry in sorted(values.items())])


def _tests(ev: dict[str, Any], recorded: str) -> list[dict[str, Any]]:
    """`Test`s (`Structures/Test.cs`); a defect goes to the test it names (`DefectsFound`), else to the first."""
    defects = [d for d in ev.get("defects") or [] if isinstance(d, dict)]
    tests = ev.get("tests")
    out: list[dict[str, Any]]
    if isinstance(tests, list):
        out = [
            {
                "TestName": t.get("name"),
                "TestStartTime": cfx_timestamp(ev["started"]) if ev.get("started") else None,
                "TestEndTime": cfx_timestamp(ev["ended"]) if ev.get("ended") else recorded,
                "Result": _unit_result(t.get("result")),
                "SymptomsFound": [],
                "DefectsFound": [],
                "Measurements": _numeric_measurements(t.get("measurements") or [], recorded),
            }
            for t in tests
            if isinstance(t, dict)
        ]
    else:
        measurements = ev.get("measurements")
        if isinstance(measurements, list):
            numeric = _numeric_measurements(measurements, recorded)
        else:
            numeric = _values_as_measurements(ev.get("values"), recorded)
        out = []
        if numeric or defects or ev.get("result") is not None:
            out.append({
                "TestName": "overall",
                "TestStartTime": None,
                "TestEndTime": recorded,
                "Result": _unit_result(ev.get("result")),
                "SymptomsFound": [],
                "DefectsFound": [],
                "Measurements": numeric,
            })
    by_name = {t["TestName"]: t for t in out}
    for d in defects:
        test = by_name.get(d.get("test")) or (out[0] if out else None)
        if test is not None:
            test["DefectsFound"].append(_defect(d))
    return out


def _defect(d: Mapping[str, Any]) -> dict[str, Any]:
    """`Defect` (`Structures/Defect.cs`)."""
    return {
        "DefectCode": d.get("code"),
        "Description": d.get("test"),
        "ComponentOfInterest": {"ReferenceDesignator": d["refdes"]} if d.get("refdes") else None,
    }


def _defects(ev: dict[str, Any]) -> list[dict[str, Any]]:
    return [_defect(d) for d in ev.get("defects") or [] if isinstance(d, dict)]


def _position(ev: dict[str, Any]) -> int:
    n = ev.get("board_number")
    return n if isinstance(n, int) else 1


def _designators(value: Any) -> list[str]:
    """Reference designators as a list (OPC UA String[]) or one string separated by commas or spaces."""
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, (list, tuple)):
        return [str(part) for part in value if part not in (None, "")]
    return []


def _materials(ev: dict[str, Any], serial: str) -> list[dict[str, Any]]:
    """`values` keyed `<location>_reel_id` / `<location>_part_number` / `<location>_ref_designators` (the
    profiles' naming) -> one InstalledMaterial per location, its reference designators as
    `InstalledComponents` (and their count as `QuantityInstalled`, else 1); anything else is not material
    data and is left out."""
    raw = ev.get("values")
    values: dict[str, Any] = raw if isinstance(raw, dict) else {}
    locations: dict[str, dict[str, Any]] = {}
    suffixes = (("_reel_id", "UniqueIdentifier"), ("_part_number", "InternalPartNumber"),
                ("_ref_designators", "designators"))
    for key, entry in sorted(values.items()):
        for suffix, field in suffixes:
            if key.endswith(suffix):
                locations.setdefault(key[: -len(suffix)], {})[field] = _value(entry)
    out = []
    for location, fields in locations.items():
        if "UniqueIdentifier" not in fields and "InternalPartNumber" not in fields:
            continue  # designators alone name no material
        designators = _designators(fields.get("designators"))
        out.append({
            "UnitIdentifier": serial,
            "UnitPositionNumber": _position(ev),
            "QuantityInstalled": len(designators) or 1,
            "Material": {
                "UniqueIdentifier": fields.get("UniqueIdentifier"),
                "InternalPartNumber": fields.get("InternalPartNumber"),
            },
            "CarrierLocation": {"LocationIdentifier": location, "LocationName": location},
            "InstalledComponents": [{"ReferenceDesignator": designator} for designator in designators],
        })
    return out


def _unit_body(kind: str, ev: dict[str, Any], tx: str, serial: str, recorded: str) -> tuple[str, dict[str, Any]]:
    if kind == "unit_processed":
        result = _PROCESSING_RESULT.get(str(ev.get("result", "")).lower(), "Succeeded")
        return UNITS_PROCESSED, {
            "TransactionId": tx,
            "OverallResult": result,
            "CommonProcessData": _values_as_process_data(ev.get("values")),
            "UnitProcessData": [
                {"UnitIdentifier": serial, "UnitPositionNumber": _position(ev), "UnitResult": result,
                 "UnitProcessData": None}
            ],
        }
    if kind == "unit_inspected":
        overall = _unit_result(ev.get("result"))
        return UNITS_INSPECTED, {
            "TransactionId": tx,
            "InspectionMethod": _INSPECTION_METHOD.get(str(ev.get("inspection_method", "aoi")).lower(), "AOI"),
            "Inspector": None,
            "RecipeName": ev.get("program"),
            "InspectedUnits": [
                {
                    "UnitIdentifier": serial,
                    "UnitPositionNumber": _position(ev),
                    "OverallResult": overall,
                    "Inspections": [
                        {
                            "InspectionName": "overall",
                            "InspectionEndTime": recorded,
                            "Result": overall,
                            "DefectsFound": _defects(ev),
                            "Symptoms": [],
                            "Measurements": _values_as_measurements(ev.get("values"), recorded),
                        }
                    ],
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
                    "ProcessData": generic_process_data(
                        [(r.get("signal"), r.get("value"), r.get("unit")) for r in readings if isinstance(r, dict)]
                    )
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
        },
        source=handle,
        timestamp=now,
        unique=unique,
    )


def endpoint_connected(
    handle: str, *, request_uri: str | None, request_address: str | None, now: str, unique: str
) -> dict[str, Any]:
    """CFX.EndpointConnected (`EndpointConnected.cs`: exactly these three fields): the gateway speaks for
    `handle`; requests go to `request_address` on `request_uri` (both null when requests are off)."""
    return envelope(
        ENDPOINT_CONNECTED,
        {
            "CFXHandle": handle,
            "RequestNetworkUri": request_uri if request_address else None,
            "RequestTargetAddress": request_address,
        },
        source=handle,
        timestamp=now,
        unique=unique,
    )


def endpoint_shutting_down(handle: str, *, now: str, unique: str) -> dict[str, Any]:
    return envelope(ENDPOINT_SHUTTING_DOWN, {"CFXHandle": handle}, source=handle, timestamp=now, unique=unique)


# ---- requests and responses (the request listener, `publish/cfx_requests.py`) ------------------------

ARE_YOU_THERE_REQUEST: Final = "CFX.AreYouThereRequest"
ARE_YOU_THERE_RESPONSE: Final = "CFX.AreYouThereResponse"
WHO_IS_THERE_REQUEST: Final = "CFX.WhoIsThereRequest"
WHO_IS_THERE_RESPONSE: Final = "CFX.WhoIsThereResponse"
GET_ENDPOINT_INFORMATION_REQUEST: Final = "CFX.GetEndpointInformationRequest"
GET_ENDPOINT_INFORMATION_RESPONSE: Final = "CFX.GetEndpointInformationResponse"
NOT_SUPPORTED_RESPONSE: Final = "CFX.NotSupportedResponse"

PUBLISHED: Final = (
    ENDPOINT_CONNECTED, HEARTBEAT, ENDPOINT_SHUTTING_DOWN, STATION_STATE_CHANGED, FAULT_OCCURRED, FAULT_CLEARED,
    PROCESS_DATA_RECORDED, COMPONENTS_PLACED, WORK_STARTED, WORK_COMPLETED, MATERIALS_INSTALLED, UNITS_PROCESSED,
    UNITS_INSPECTED, UNITS_TESTED,
)
"""Every CFX message this gateway publishes for a handle."""
ANSWERED: Final = (ARE_YOU_THERE_REQUEST, WHO_IS_THERE_REQUEST, GET_ENDPOINT_INFORMATION_REQUEST)
"""The requests the listener answers; any other gets `CFX.NotSupportedResponse`."""


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What a handle says about itself in responses (`Structures/Endpoint.cs`)."""

    handle: str
    request_uri: str
    """`RequestNetworkUri`: the broker the requests come through (no user or password)."""
    request_address: str
    """`RequestTargetAddress`: the AMQP address this handle takes requests on."""
    friendly_name: str | None = None
    model: str | None = None
    software_version: str | None = None


def supported_topics() -> list[dict[str, Any]]:
    """`SupportedTopic`s (`Structures/SupportedTopic.cs`): the namespaces published, and `CFX` (the base
    topic, whose requests are answered) as PublisherConsumer."""
    topics: dict[str, list[str]] = {}
    for name in PUBLISHED:
        topics.setdefault(name.rpartition(".")[0], []).append(name)
    topics["CFX"] = [*topics.get("CFX", []), *ANSWERED]
    return [
        {"TopicName": topic, "TopicSupportType": "PublisherConsumer" if topic == "CFX" else "Publisher",
         "SupportedMessages": names}
        for topic, names in sorted(topics.items())
    ]


def _matches(request_body: Mapping[str, Any]) -> bool:
    """WhoIsThereRequest's filter (`SupportedTopicQueryType`): Ignore answers always; All when every asked
    topic (and its listed messages) is supported here; Any when at least one is."""
    query = str(request_body.get("SupportedTopicQueryType") or "Ignore")
    asked = request_body.get("SupportedTopics") or []
    if query == "Ignore" or not isinstance(asked, list) or not asked:
        return True
    ours = {t["TopicName"]: set(t["SupportedMessages"]) for t in supported_topics()}

    def supported(topic: Any) -> bool:
        if not isinstance(topic, dict) or topic.get("TopicName") not in ours:
            return False
        wanted = topic.get("SupportedMessages") or []
        return isinstance(wanted, list) and set(wanted) <= ours[topic["TopicName"]]

    hits = [supported(t) for t in asked]
    return all(hits) if query == "All" else any(hits)


_SUCCESS: Final = {"Result": "Success", "ResultCode": 0, "Message": None}


def response_body(name: str, request_body: Mapping[str, Any], info: EndpointInfo) -> tuple[str, dict[str, Any]] | None:
    """The response (name, body) to request `name` for one handle, as the SDK's classes serialise it;
    None when a WhoIsThereRequest's filter does not match (the SDK says only matching endpoints answer)."""
    if name in (ARE_YOU_THERE_REQUEST, WHO_IS_THERE_REQUEST):
        if name == WHO_IS_THERE_REQUEST and not _matches(request_body):
            return None
        return (ARE_YOU_THERE_RESPONSE if name == ARE_YOU_THERE_REQUEST else WHO_IS_THERE_RESPONSE), {
            "Result": dict(_SUCCESS),
            "CFXHandle": info.handle,
            "RequestNetworkUri": info.request_uri,
            "RequestTargetAddress": info.request_address,
        }
    if name == GET_ENDPOINT_INFORMATION_REQUEST:
        return GET_ENDPOINT_INFORMATION_RESPONSE, {
            "Result": dict(_SUCCESS),
            "EndpointInformation": {
                "CFXHandle": info.handle,
                "CFXVersion": CFX_VERSION,
                "RequestNetworkUri": info.request_uri,
                "RequestTargetAddress": info.request_address,
                "UniqueIdentifier": info.handle,
                "FriendlyName": info.friendly_name,
                "Vendor": "emsedge",
                "ModelNumber": info.model,
                "SerialNumber": None,
                "SoftwareVersion": info.software_version,
                "FirmwareVersion": None,
                "OperatingSystem": "OtherLinux",
                "OperatingSystemPlatform": "Other",
                "OperatingSystemVersion": None,
                "Stages": [],
                "NumberOfLanes": 1,
                "HermesInformation": None,
                "OperatingRequirements": None,
                "SupportedTopics": supported_topics(),
                "SupportedPCBDimensions": None,
                "SleepStates": [],
            },
        }
    known = name.startswith("CFX.") and name.endswith("Request")
    return NOT_SUPPORTED_RESPONSE, {
        "RequestResult": {"Result": "Failed", "ResultCode": 0,
                          "Message": "Not implemented message" if known else "Unknown message"},
    }


def respond(request: Mapping[str, Any], info: EndpointInfo, *, now: str, unique: str) -> dict[str, Any] | None:
    """The response envelope to a request envelope: `Source` = this handle, `Target` = the requester,
    `RequestID` echoed (as `AmqpRequestProcessor` completes a request); None when nothing is to be sent."""
    name = str(request.get("MessageName") or "")
    raw_body = request.get("MessageBody")
    answer = response_body(name, raw_body if isinstance(raw_body, Mapping) else {}, info)
    if answer is None:
        return None
    response_name, body = answer
    source = request.get("Source")
    request_id = request.get("RequestID")
    return envelope(
        response_name, body, source=info.handle, timestamp=now, unique=unique,
        target=None if source is None else str(source), request_id=None if request_id is None else str(request_id),
    )


def decode_envelope(body: bytes, content_encoding: str | None) -> dict[str, Any]:
    """A received CFX message body (UTF-8 JSON, or gzip when `content_encoding` says so) as one envelope;
    a JSON list (the SDK may batch) yields its first envelope."""
    data = gzip.decompress(body) if (content_encoding or "").lower() == "gzip" else body
    value = orjson.loads(data)
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, dict) or "MessageName" not in value:
        raise ValueError("not a CFX envelope")
    return value
