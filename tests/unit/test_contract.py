"""The MES contract as code: models per event type, normal forms, generated documents, the docs' examples."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from emsedge import contract, schema
from emsedge.schema import EventType, Severity, event, event_body, severity_of


def _docs() -> Path:
    return Path(__file__).resolve().parents[2] / "docs"


def _topic_for(payload: dict[str, Any]) -> str:
    if payload.get("schema", "").startswith("emsedge/status"):
        return "ems/p/a/l/_gateway/status"
    kind = {"emsedge/telemetry@1": "telemetry", "emsedge/event@2": "events", "emsedge/state@1": "state",
            "emsedge/telemetry-compact@1": "telemetry", "emsedge/meta@1": "meta"}
    return f"ems/p/a/l/{payload.get('equipment')}/{kind.get(payload.get('schema', ''), 'unknown')}"


def test_every_event_type_has_a_contract_model() -> None:
    assert set(schema.EVENT_MODELS) == {str(t) for t in EventType}


def test_committed_asyncapi_document_is_generated_from_the_current_models() -> None:
    committed = (_docs() / "asyncapi.yaml").read_text()
    assert committed == contract.asyncapi_yaml(), (
        "docs/asyncapi.yaml is out of date: emsedge contract-schema --asyncapi > docs/asyncapi.yaml"
    )


def test_asyncapi_document_describes_every_topic_with_examples_that_validate() -> None:
    doc = contract.asyncapi()
    assert doc["asyncapi"].startswith("3.")
    assert {c["address"] for c in doc["channels"].values()} == {
        "{prefix}/{equipment}/telemetry", "{prefix}/{equipment}/events", "{prefix}/{equipment}/state",
        "{prefix}/{equipment}/meta", "{prefix}/_gateway/status",
    }
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], ref
    for message in doc["components"]["messages"].values():
        for example in message["examples"]:
            contract.check_message(_topic_for(example["payload"]), orjson.dumps(example["payload"]))


def test_every_json_example_in_the_mqtt_contract_document_validates_against_the_models() -> None:
    text = (_docs() / "mqtt-contract.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    for block in blocks:
        payload = json.loads(block)
        contract.check_message(_topic_for(payload), block.encode())


def test_contract_schema_command_prints_a_json_schema_for_every_payload() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert contract.main_contract_schema([]) == 0
    schemas = json.loads(out.getvalue())
    assert {"TelemetryMessage", "EventMessage", "StatusMessage", "EquipmentStateMessage", "UnitsMissed",
            "FaultOccurred", "UnitInspected"} <= set(schemas)
    defect = schemas["UnitInspected"]["$defs"]["Defect"]
    assert set(defect["properties"]) == {"refdes", "code", "text", "test"}
    assert defect["required"] == ["refdes", "code"]


def test_defects_become_objects_with_refdes_code_and_text_whatever_the_source_sends() -> None:
    body = event_body(EventType.UNIT_INSPECTED, serial="PCB-1", result="fail",
                      defects=["C5:missing", ["R3", "bridge", "solder bridge"], {"refdes": "U1", "code": 7}])
    assert body["defects"] == [
        {"refdes": "C5", "code": "missing", "text": None},
        {"refdes": "R3", "code": "bridge", "text": "solder bridge"},
        {"refdes": "U1", "code": "7", "text": None},
    ]
    assert event_body(EventType.UNIT_INSPECTED, serial="PCB-1", defects=None)["defects"] is None


@pytest.mark.parametrize(("raw", "severity"), [
    ("error", "error"), ("alarm", "error"), ("ALARM", "error"), ("fatal", "critical"), ("Warning", "warning"),
    ("information", "info"), (900, "critical"), (700, "error"), (401, "error"), (300, "warning"), (100, "info"),
    (None, "error"), ("something else", "error"),
])  # fmt: skip
def test_severity_is_one_of_the_documented_set(raw: Any, severity: str) -> None:
    assert severity_of(raw) == severity
    body = event_body(EventType.FAULT_OCCURRED, fault_occurrence_id="f", fault_code="X", severity=raw)
    assert body["severity"] == severity
    assert type(body["severity"]) is str  # a plain string on the wire and in records
    assert body["severity"] in {s.value for s in Severity}


def test_fault_code_is_always_a_string_and_the_text_is_in_text() -> None:
    hsms = event_body(EventType.FAULT_OCCURRED, fault_occurrence_id="f", alid=7, altx="Camera light low", alcd=134,
                      severity="warning")
    assert (hsms["fault_code"], hsms["text"], hsms["alid"]) == ("7", "Camera light low", 7)
    triggered = event_body(EventType.FAULT_CLEARED, fault_occurrence_id="f", fault_code=1201)
    assert triggered["fault_code"] == "1201"


def test_gateway_events_accept_only_their_documented_fields() -> None:
    with pytest.raises(ValidationError):
        event("r", "reflow_oven", EventType.CONNECTION_LOST, reason="x", extra_field=1)
    with pytest.raises(ValidationError):
        event("r", "reflow_oven", EventType.CONNECTION_LOST)  # reason is required
    with pytest.raises(ValueError, match="no contract model"):
        event_body("board_teleported")


def test_a_payload_that_only_validates_thanks_to_normalisation_is_rejected() -> None:
    drifted = {"schema": "emsedge/event@2", "id": "1", "seq": 1, "gateway": "g", "equipment": "aoi-1",
               "equipment_type": "aoi", "ts": "2026-11-24T10:15:02.000Z",
               "event": {"type": "unit_inspected", "serial": "PCB-1", "defects": ["C5:missing"]}}
    with pytest.raises(ValueError, match="normal form"):
        contract.check_message("ems/p/a/l/aoi-1/events", orjson.dumps(drifted))
    with pytest.raises(ValueError, match="equipment"):
        contract.check_message("ems/p/a/l/pnp-1/events", orjson.dumps({**drifted, "event": {
            "type": "connection_restored"}}))
    assert contract.check_message("ems/p/a/l/aoi-1/state", b"") is None  # a cleared retained state
