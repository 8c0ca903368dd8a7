"""The MES contract as machine-readable documents, generated from the wire models in emsedge.schema.

`emsedge contract-schema` prints the JSON Schema of every payload (`--asyncapi` prints the AsyncAPI 3.0
document instead). `docs/asyncapi.yaml` is this module's output, committed so integrators can read it
without installing emsedge; a test fails when it is out of date (regenerate with
`emsedge contract-schema --asyncapi > docs/asyncapi.yaml`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml
from pydantic import BaseModel

from emsedge import schema

PAYLOADS: dict[str, type[BaseModel]] = {
    "TelemetryMessage": schema.TelemetryMessage,
    "CompactTelemetryMessage": schema.CompactTelemetryMessage,
    "TelemetryMetaMessage": schema.TelemetryMetaMessage,
    "EventMessage": schema.EventMessage,
    "StatusMessage": schema.StatusMessage,
    "EquipmentStateMessage": schema.EquipmentStateMessage,
    **{model.__name__: model for model in schema.EVENT_MODELS.values()},
}
"""Every payload and every event body, by name."""

_EXAMPLE_TS = "2026-11-24T10:15:02.000Z"
_ENVELOPE = {"id": "0b6f7c1e-3f0a-4a8e-9d0c-3c1f2f3b9a11", "seq": 1042, "gateway": "line1-gw"}


def json_schemas() -> dict[str, Any]:
    """JSON Schema (draft 2020-12, as pydantic writes it) of every payload, by name."""
    return {name: model.model_json_schema(by_alias=True) for name, model in PAYLOADS.items()}


def examples() -> dict[str, list[dict[str, Any]]]:
    """One or more example payloads per message (each validated by a test)."""
    reflow = {"equipment": "reflow-1", "equipment_type": "reflow_oven", "ts": _EXAMPLE_TS}
    aoi = {"equipment": "aoi-1", "equipment_type": "aoi", "ts": _EXAMPLE_TS}

    def ev(where: dict[str, str], type: schema.EventType, **fields: Any) -> dict[str, Any]:
        return {"schema": schema.SCHEMA_EVENT, **_ENVELOPE, **where, "event": schema.event_body(type, **fields)}

    full = {
        "schema": schema.SCHEMA_TELEMETRY, **_ENVELOPE, **reflow,
        "readings": [
            schema.reading("zone1_top_actual", 218.4, unit="Cel", ts=_EXAMPLE_TS),
            schema.reading("conveyor_speed", 72.5, unit="cm/min", ts=_EXAMPLE_TS),
            schema.reading("board_count", None, unit=None, quality="bad", ts=_EXAMPLE_TS,
                           status="IllegalDataAddress"),
        ],
    }
    meta = example_meta()
    compact = schema.compact_telemetry(full, meta)
    assert compact is not None
    return {
        "telemetry": [full, compact],
        "meta": [meta.message("line1-gw")],
        "events": [
            ev(aoi, schema.EventType.UNIT_INSPECTED, serial="PCB-2026-000123", result="fail", raw_result="FAIL",
               defects=["C12:tombstone"], ceid=3001, name="board_inspected"),
            ev(aoi, schema.EventType.FAULT_OCCURRED, fault_occurrence_id="c2b4d1e0-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
               alid=7, altx="Camera light low", alcd=0x86, severity="warning"),
            ev(reflow, schema.EventType.UNITS_MISSED, count=1, trigger="board_exit_serial", emit="unit_processed",
               counter="board_exit_count", counter_from=41, counter_to=43, last_serial="PCB-2026-000122",
               next_serial="PCB-2026-000124"),
        ],
        "state": [{
            "schema": schema.SCHEMA_STATE, "gateway": "line1-gw", **reflow, "connection": "connected",
            "station_state": 1100, "station_state_name": "productive", "station_state_since": _EXAMPLE_TS,
            "active_faults": [], "last_board": {"serial": "PCB-2026-000123", "event": "unit_processed",
                                                "ts": _EXAMPLE_TS},
        }],
        "status": [{
            "schema": schema.SCHEMA_STATUS, "gateway": "line1-gw", "state": "online", "ts": _EXAMPLE_TS,
            "version": "0.1.0", "started_at": _EXAMPLE_TS, "backlog": 0, "backlog_oldest_age_s": 0.0,
            "drain_eta_s": None, "dropped": 0, "dead_letters": 0, "dropped_total": 0,
            "dropped_total_by_equipment": {}, "status_interval_s": 10.0, "equipment_total": 5,
            "equipment_connected": 4, "equipment_by_state": {"connected": 4, "retrying": 1},
        }, {
            "schema": schema.SCHEMA_STATUS, "gateway": "line1-gw", "state": "offline", "ts": _EXAMPLE_TS,
            "version": "0.1.0", "started_at": _EXAMPLE_TS, "cause": "connection_lost",
        }],
    }


def example_meta() -> schema.TelemetryMeta:
    """The meta of the documented compact telemetry example."""
    return schema.TelemetryMeta.build("reflow-1", "reflow_oven", {
        "zone1_top_actual": {"unit": "Cel", "type": "float32"},
        "conveyor_speed": {"unit": "cm/min", "type": "float32"},
        "board_count": {"unit": None, "type": "uint32"},
    })


def _lift_defs(schemas: dict[str, Any]) -> dict[str, Any]:
    """One `components.schemas` map: pydantic's per-model `$defs` lifted up, refs pointed at it."""
    lifted: dict[str, Any] = {}
    for name, model_schema in schemas.items():
        own = dict(model_schema)
        for def_name, d in own.pop("$defs", {}).items():
            lifted[def_name] = d
        lifted[name] = own
    text = json.dumps(lifted).replace('"#/$defs/', '"#/components/schemas/')
    result: dict[str, Any] = json.loads(text)
    return result


def asyncapi(version: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document: topics (channels), what the gateway sends on them, payloads and examples."""
    from emsedge import __version__  # noqa: PLC0415

    ex = examples()
    messages = {
        "telemetry": ("TelemetryMessage", "Readings of one poll or publishing cycle (mqtt.qos, not retained); "
                      "with mqtt.telemetry_format: compact the payload is a CompactTelemetryMessage "
                      "(schema emsedge/telemetry-compact@1): read the schema field."),
        "meta": ("TelemetryMetaMessage", "Retained, with mqtt.telemetry_format: compact only: what the compact "
                 "telemetry of one machine leaves out (units, data types); published before the first compact "
                 "message that names it; an empty retained message clears it when the machine leaves the config."),
        "events": ("EventMessage", "One event: state change, fault, board result, connection, data loss."),
        "state": ("EquipmentStateMessage", "Retained current state of one machine; an empty retained message "
                  "clears it when the machine leaves the config."),
        "status": ("StatusMessage", "Retained gateway status: online (refreshed every mqtt.status_interval, "
                   "10 s by default) or offline (last will, or a clean stop; `cause` says which)."),
    }
    prefix = {"description": "mqtt.topic_prefix, by default ems/{site}/{area}/{line}."}
    equipment = {"description": "Equipment id from the config (_gateway for the gateway's own events)."}
    channels: dict[str, Any] = {}
    for key, address in (("telemetry", "{prefix}/{equipment}/telemetry"), ("events", "{prefix}/{equipment}/events"),
                         ("state", "{prefix}/{equipment}/state"), ("meta", "{prefix}/{equipment}/meta"),
                         ("status", "{prefix}/_gateway/status")):
        params: dict[str, Any] = {"prefix": prefix}
        if "{equipment}" in address:
            params["equipment"] = equipment
        channels[key] = {
            "address": address, "parameters": params,
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "emsedge MES contract",
            "version": version or __version__,
            "description": "What an emsedge gateway publishes over MQTT. Generated from emsedge.schema by "
            "`emsedge contract-schema --asyncapi`; docs/mqtt-contract.md explains delivery (at-least-once, "
            "de-duplicate by id, gaps by seq). Event payloads are `" + schema.SCHEMA_EVENT + "`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": {
            f"publish_{key}": {"action": "send", "channel": {"$ref": f"#/channels/{key}"},
                               "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}]}
            for key in messages
        },
        "components": {
            "messages": {
                key: {
                    "name": model, "summary": summary,
                    "payload": {"oneOf": [{"$ref": "#/components/schemas/TelemetryMessage"},
                                          {"$ref": "#/components/schemas/CompactTelemetryMessage"}]}
                    if key == "telemetry" else {"$ref": f"#/components/schemas/{model}"},
                    "examples": [{"payload": p} for p in ex[key]],
                }
                for key, (model, summary) in messages.items()
            },
            "schemas": _lift_defs(json_schemas()),
        },
    }


def asyncapi_yaml(version: str | None = None) -> str:
    header = "# Generated by `emsedge contract-schema --asyncapi` from emsedge.schema: do not edit by hand.\n"
    return header + yaml.safe_dump(asyncapi(version), sort_keys=False, allow_unicode=True, width=110)


def main_contract_schema(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emsedge contract-schema", description="Print the JSON Schemas of every MQTT payload emsedge sends."
    )
    parser.add_argument("--asyncapi", action="store_true", help="print the AsyncAPI 3.0 document (YAML) instead")
    args = parser.parse_args(argv)
    if args.asyncapi:
        sys.stdout.write(asyncapi_yaml())
    else:
        sys.stdout.write(json.dumps(json_schemas(), indent=2) + "\n")
    return 0


_TOPIC_MODELS: dict[str, type[BaseModel]] = {
    "telemetry": schema.TelemetryMessage,
    "events": schema.EventMessage,
    "state": schema.EquipmentStateMessage,
    "meta": schema.TelemetryMetaMessage,
    "status": schema.StatusMessage,
}


def check_message(topic: str, payload: bytes) -> BaseModel | None:
    """Validate one message as received on `topic` against the contract (raises ValueError).

    Stricter than the models alone: an event body must already be in the normal form the gateway's
    builder produces (`fault_code` a string, defects as objects, the fault text in `text`), so a
    payload that validates only thanks to the models' normalisation is still a contract violation.
    Returns None for an empty retained message on a state or meta topic (a machine removed from the config).
    Compact telemetry is validated as such; `expand_compact` with the equipment's meta gives its full form.
    """
    parts = topic.split("/")
    kind = parts[-1]
    model = _TOPIC_MODELS.get(kind)
    if model is None or len(parts) < 3:
        raise ValueError(f"{topic}: not a topic of the contract")
    if payload == b"" and kind in ("state", "meta"):
        return None
    data = json.loads(payload)
    if kind == "telemetry" and isinstance(data, dict) and data.get("schema") == schema.SCHEMA_TELEMETRY_COMPACT:
        model = schema.CompactTelemetryMessage
    message = model.model_validate(data)
    equipment = parts[-2]
    if kind != "status" and data.get("equipment") != equipment:
        raise ValueError(f"{topic}: payload equipment {data.get('equipment')!r} is not the topic's {equipment!r}")
    if kind == "events":
        body = data["event"]
        normal = schema.event_body(body["type"], **{k: v for k, v in body.items() if k != "type"})
        if normal != body:
            differs = sorted(k for k in normal.keys() | body.keys() if normal.get(k, ...) != body.get(k, ...))
            raise ValueError(f"{topic}: event body not in normal form; fields {differs}: {body}")
    return message
