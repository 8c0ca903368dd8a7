"""The emsedge -> IPC-CFX mapping against the JSON shapes the CFX SDK (IPCConnectedFactoryExchange/CFX) writes."""

from __future__ import annotations

import gzip
import re
import uuid

import orjson
import pytest

from emsedge.publish import cfx_mapping as cm

HANDLE = "plant1.line1.pnp-1"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def record(event: dict[str, object], *, rid: str = "5d1c0000-0000-4000-8000-000000000001") -> dict[str, object]:
    return {
        "schema": "emsedge/event@1",
        "id": rid,
        "seq": 1,
        "gateway": "gw",
        "equipment": "pnp-1",
        "equipment_type": "pick_and_place",
        "ts": "2026-11-24T10:15:03.250Z",
        "event": event,
    }


def test_envelope_has_the_sdk_fields_in_order_with_an_offset_timestamp_and_lowercase_guid() -> None:
    envs = cm.map_record(record({"type": "station_state_changed", "state": 5000, "old_state": 1100,
                                 "old_state_duration_s": 812.4}), HANDLE)
    assert len(envs) == 1
    env = envs[0]
    assert list(env) == ["MessageName", "Version", "TimeStamp", "UniqueID", "Source", "Target", "RequestID",
                         "MessageBody"]
    assert env["MessageName"] == "CFX.ResourcePerformance.StationStateChanged"
    assert env["Version"] == "2.1"
    assert env["TimeStamp"] == "2026-11-24T10:15:03.250+00:00"
    assert GUID.match(env["UniqueID"])
    assert env["Source"] == HANDLE and env["Target"] is None and env["RequestID"] is None
    assert env["MessageBody"] == {"OldState": "1100", "OldStateDuration": "00:13:32", "NewState": "5000",
                                  "RelatedFault": None}


def test_unique_ids_are_the_same_on_every_replay_and_differ_between_records() -> None:
    ev = {"type": "unit_inspected", "serial": "PCB-1", "result": "fail"}
    first = [e["UniqueID"] for e in cm.map_record(record(ev), HANDLE)]
    again = [e["UniqueID"] for e in cm.map_record(record(ev), HANDLE)]
    other = [e["UniqueID"] for e in cm.map_record(record(ev, rid="other"), HANDLE)]
    assert first == again
    assert len(set(first)) == 3
    assert not set(first) & set(other)


def test_station_state_with_an_unknown_state_is_not_sent() -> None:
    assert cm.map_record(record({"type": "station_state_changed", "state": None}), HANDLE) == []


def test_fault_occurred_and_cleared_share_the_fault_occurrence_id() -> None:
    fid = "C2B4A1D0-0000-4000-8000-0000000000AA"
    occurred = cm.map_record(record({"type": "fault_occurred", "fault_occurrence_id": fid, "alid": 7,
                                     "altx": "Camera light low", "severity": "alarm"}), HANDLE)[0]
    cleared = cm.map_record(record({"type": "fault_cleared", "fault_occurrence_id": fid, "alid": 7}), HANDLE)[0]
    assert occurred["MessageName"] == "CFX.ResourcePerformance.FaultOccurred"
    fault = occurred["MessageBody"]["Fault"]
    assert fault["FaultOccurrenceId"] == fid.lower()
    assert fault["Severity"] == "Alarm" and fault["FaultCode"] == "7" and fault["Cause"] == "MechanicalFailure"
    assert cleared["MessageName"] == "CFX.ResourcePerformance.FaultCleared"
    assert cleared["MessageBody"]["FaultOccurrenceId"] == fid.lower()


def test_unit_tested_goes_between_work_started_and_completed_with_one_transaction_id() -> None:
    ev = {
        "type": "unit_tested", "serial": "PCB-2026-000201", "result": "fail", "test_method": "ict",
        "program": "PWR-CTRL-T", "operator": "op17", "started": "2026-01-14T09:15:02.000Z",
        "ended": "2026-01-14T09:15:36.000Z", "board_number": 1, "panel_serial": "PANEL-42",
        "tests": [{"name": "1%r101", "result": "fail", "measurements": [
            {"name": "1%r101", "value": 11822.0, "unit": "Ohm", "low": 9500.0, "high": 10500.0, "nominal": None,
             "result": "fail"}]}],
        "defects": [{"test": "1%r101", "code": "test_failed"}],
    }
    envs = cm.map_record(record(ev), HANDLE)
    assert [e["MessageName"] for e in envs] == [
        "CFX.Production.WorkStarted", "CFX.Production.TestAndInspection.UnitsTested", "CFX.Production.WorkCompleted"
    ]
    tx = cm.transaction_id(HANDLE, "PCB-2026-000201")
    assert envs[0]["MessageBody"]["TransactionID"] == tx
    assert envs[1]["MessageBody"]["TransactionId"] == tx
    assert envs[2]["MessageBody"]["TransactionID"] == tx
    assert envs[0]["TimeStamp"] == "2026-01-14T09:15:02.000+00:00"
    assert envs[2]["MessageBody"]["Result"] == "Failed"
    body = envs[1]["MessageBody"]
    assert body["TestMethod"] == "ICT"
    unit = body["TestedUnits"][0]
    assert unit["UnitIdentifier"] == "PCB-2026-000201" and unit["UnitPositionNumber"] == 1
    assert unit["OverallResult"] == "Failed"
    measurement = unit["Tests"][0]["Measurements"][0]
    assert measurement["$type"] == "CFX.Structures.NumericMeasurement, CFX"
    assert measurement["MeasuredValue"] == {"Value": 11822.0, "ValueUnits": "Ohm", "ExpectedValue": None,
                                            "MinimumAcceptableValue": 9500.0, "MaximumAcceptableValue": 10500.0}
    assert measurement["Result"] == "Failed"


def test_transaction_id_is_per_board_and_per_machine() -> None:
    assert cm.transaction_id(HANDLE, "A") == cm.transaction_id(HANDLE, "A")
    assert cm.transaction_id(HANDLE, "A") != cm.transaction_id("plant1.line1.aoi-1", "A")
    assert cm.transaction_id(HANDLE, "A") != cm.transaction_id(HANDLE, "B")


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("unit_processed", "CFX.Production.Processing.UnitsProcessed"),
        ("unit_inspected", "CFX.Production.TestAndInspection.UnitsInspected"),
        ("materials_installed", "CFX.Production.Assembly.MaterialsInstalled"),
    ],
)
def test_every_unit_event_maps_to_its_cfx_message(kind: str, name: str) -> None:
    ev = {"type": kind, "serial": "PCB-9", "result": "pass",
          "values": {"feeder_1_reel_id": {"value": "REEL-1", "unit": None},
                     "feeder_1_part_number": {"value": "CAP", "unit": None},
                     "zone1_top_actual": {"value": 151.2, "unit": "Cel"}}}
    envs = cm.map_record(record(ev), HANDLE)
    assert envs[1]["MessageName"] == name
    assert envs[1]["MessageBody"]["TransactionId"] == cm.transaction_id(HANDLE, "PCB-9")


def test_materials_installed_lists_the_reel_and_part_per_location() -> None:
    ev = {"type": "materials_installed", "serial": "PCB-9",
          "values": {"feeder_1_reel_id": {"value": "REEL-1", "unit": None},
                     "feeder_1_part_number": {"value": "CAP", "unit": None}}}
    installed = cm.map_record(record(ev), HANDLE)[1]["MessageBody"]["InstalledMaterials"]
    assert installed == [{
        "UnitIdentifier": "PCB-9", "UnitPositionNumber": 1, "QuantityInstalled": 1,
        "Material": {"UniqueIdentifier": "REEL-1", "InternalPartNumber": "CAP"},
        "CarrierLocation": {"LocationIdentifier": "feeder_1", "LocationName": "feeder_1"},
        "InstalledComponents": [],
    }]


def test_materials_installed_lists_the_reference_designators_placed_from_each_location() -> None:
    ev = {"type": "materials_installed", "serial": "PCB-9",
          "values": {"feeder_1_reel_id": {"value": "REEL-1", "unit": None},
                     "feeder_1_part_number": {"value": "RES-10K", "unit": None},
                     "feeder_1_ref_designators": {"value": ["R1", "R2"], "unit": None},
                     "feeder_2_reel_id": "REEL-2", "feeder_2_ref_designators": "C1, C2 C3",
                     "feeder_3_ref_designators": ["C9"]}}
    installed = cm.map_record(record(ev), HANDLE)[1]["MessageBody"]["InstalledMaterials"]
    assert [(m["CarrierLocation"]["LocationIdentifier"], m["QuantityInstalled"],
             [c["ReferenceDesignator"] for c in m["InstalledComponents"]]) for m in installed] == [
        ("feeder_1", 2, ["R1", "R2"]), ("feeder_2", 3, ["C1", "C2", "C3"])]


def test_telemetry_maps_to_process_data_recorded_as_the_sdks_generic_process_data() -> None:
    rec = {"schema": "emsedge/telemetry@1", "id": "t1", "seq": 2, "gateway": "gw", "equipment": "reflow-1",
           "equipment_type": "reflow_oven", "ts": "2026-11-24T10:16:40.000Z",
           "readings": [{"signal": "zone1", "value": 151.2, "unit": "Cel", "quality": "good",
                         "ts": "2026-11-24T10:16:40.000Z"},
                        {"signal": "recipe", "value": "SAC305", "unit": None, "quality": "good"},
                        {"signal": "door_open", "value": False, "unit": None, "quality": "good"},
                        {"signal": "zone2", "value": None, "unit": "Cel", "quality": "bad"}]}
    (env,) = cm.map_record(rec, "p.l.reflow-1")
    assert env["MessageName"] == "CFX.ResourcePerformance.ProcessDataRecorded"
    # ProcessDataRecorded.cs: one property, ProcessData; GenericProcessData.cs (2.1): Setpoints, Readings
    # (GenericValue{Name, Value: NumericValue}), Parameters (GenericParameter{Name, Value: string}), StageData.
    assert env["MessageBody"] == {"ProcessData": {
        "$type": "CFX.Structures.Generic.GenericProcessData, CFX",
        "Setpoints": [],
        "Readings": [{"Name": "zone1", "Value": {"Value": 151.2, "ValueUnits": "Cel", "ExpectedValue": None,
                                                 "MinimumAcceptableValue": None, "MaximumAcceptableValue": None}}],
        "Parameters": [{"Name": "recipe", "Value": "SAC305"}, {"Name": "door_open", "Value": "false"}],
        "StageData": [],
    }}


def test_unit_bodies_hold_only_fields_the_sdk_classes_have() -> None:
    """Property names per class, read from the SDK (IPCConnectedFactoryExchange/CFX at 880255d2)."""
    sdk = {
        "ProcessedUnit": {"UnitIdentifier", "UnitPositionNumber", "UnitResult", "UnitProcessData"},
        "InspectedUnit": {"UnitIdentifier", "UnitPositionNumber", "OverallResult", "Inspections", "Verification",
                          "TotalInspectionCount"},
        "Inspection": {"UniqueIdentifier", "InspectionName", "InspectionStartTime", "InspectionEndTime",
                       "TestProcedure", "Comments", "Result", "Verification", "VerificationDetail", "Error",
                       "DefectsFound", "Symptoms", "Measurements", "RefNo"},
        "TestedUnit": {"UnitIdentifier", "UnitPositionNumber", "OverallResult", "Tests"},
        "Test": {"UniqueIdentifier", "TestName", "TestStartTime", "TestEndTime", "TestConditions", "TestProcedure",
                 "Comments", "Result", "Error", "SymptomsFound", "DefectsFound", "Measurements"},
        "UnitsProcessed": {"TransactionId", "OverallResult", "CommonProcessData", "UnitProcessData"},
        "UnitsInspected": {"TransactionId", "InspectionMethod", "SamplingInformation", "Inspector", "RecipeName",
                           "RecipeRevision", "InspectedUnits", "InspectedPanel"},
        "UnitsTested": {"TransactionId", "TestMethod", "Tester", "RecipeName", "RecipeRevision",
                        "SamplingInformation", "TestedUnits"},
        "Heartbeat": {"CFXHandle", "HeartbeatFrequency", "ActiveFaults", "ActiveRecipes"},
        "EndpointConnected": {"CFXHandle", "RequestNetworkUri", "RequestTargetAddress"},
    }
    values = {"zone1_top_actual": {"value": 151.2, "unit": "Cel"}}
    processed = cm.map_record(record({"type": "unit_processed", "serial": "S", "values": values}), HANDLE)[1]
    body = processed["MessageBody"]
    assert set(body) <= sdk["UnitsProcessed"] and set(body["UnitProcessData"][0]) <= sdk["ProcessedUnit"]
    assert body["CommonProcessData"]["$type"] == "CFX.Structures.Generic.GenericProcessData, CFX"
    assert body["UnitProcessData"][0]["UnitResult"] == "Succeeded"
    inspected = cm.map_record(record({"type": "unit_inspected", "serial": "S", "result": "fail",
                                      "defects": [{"refdes": "C12", "code": "bridge"}]}), HANDLE)[1]["MessageBody"]
    unit = inspected["InspectedUnits"][0]
    assert set(inspected) <= sdk["UnitsInspected"] and set(unit) <= sdk["InspectedUnit"]
    assert set(unit["Inspections"][0]) <= sdk["Inspection"]
    assert unit["Inspections"][0]["DefectsFound"] == [
        {"DefectCode": "bridge", "Description": None, "ComponentOfInterest": {"ReferenceDesignator": "C12"}}]
    tested = cm.map_record(record({"type": "unit_tested", "serial": "S", "result": "fail", "tests": [
        {"name": "r1", "result": "fail", "measurements": [{"name": "r1", "value": 5.0, "low": 9.0},
                                                          {"name": "label", "value": "n/a"}]}],
        "defects": [{"test": "r1", "code": "test_failed"}]}), HANDLE)[1]["MessageBody"]
    unit = tested["TestedUnits"][0]
    assert set(tested) <= sdk["UnitsTested"] and set(unit) <= sdk["TestedUnit"]
    (test,) = unit["Tests"]
    assert set(test) <= sdk["Test"]
    assert test["DefectsFound"][0]["DefectCode"] == "test_failed"
    (measurement,) = test["Measurements"]  # NumericValue.Value is a double: the text one is left out
    assert measurement["Result"] == "Failed"  # a non-nullable TestResult: from the limits when not given
    beat = cm.heartbeat(HANDLE, 60.0, [], now="2026-11-24T10:00:00.000+00:00", unique=str(uuid.uuid4()))
    assert set(beat["MessageBody"]) == sdk["Heartbeat"]
    connected = cm.endpoint_connected(HANDLE, request_uri="amqp://h:5672", request_address=None,
                                      now="2026-11-24T10:00:00.000+00:00", unique=str(uuid.uuid4()))
    assert connected["MessageBody"] == {"CFXHandle": HANDLE, "RequestNetworkUri": None, "RequestTargetAddress": None}


INFO = cm.EndpointInfo(handle=HANDLE, request_uri="amqp://broker:5672", request_address=f"/queue/{HANDLE}")


def ask(name: str, body: dict[str, object]) -> dict[str, object] | None:
    req = {"MessageName": name, "Version": "2.1", "TimeStamp": "2026-11-24T10:00:00+00:00",
           "UniqueID": str(uuid.uuid4()), "Source": "mes.1", "Target": HANDLE, "RequestID": "REQUEST-1",
           "MessageBody": body}
    return cm.respond(req, INFO, now="2026-11-24T10:00:01.000+00:00", unique="u")


def test_responses_echo_the_request_id_and_swap_source_and_target() -> None:
    response = ask("CFX.AreYouThereRequest", {"CFXHandle": HANDLE})
    assert response is not None
    assert (response["Source"], response["Target"], response["RequestID"]) == (HANDLE, "mes.1", "REQUEST-1")
    assert response["MessageBody"] == {"Result": {"Result": "Success", "ResultCode": 0, "Message": None},
                                       "CFXHandle": HANDLE, "RequestNetworkUri": "amqp://broker:5672",
                                       "RequestTargetAddress": f"/queue/{HANDLE}"}


@pytest.mark.parametrize(
    ("query", "topics", "answers"),
    [
        ("Ignore", [{"TopicName": "CFX.Materials.Storage"}], True),
        ("Any", [{"TopicName": "CFX.Materials.Storage"}, {"TopicName": "CFX.Production"}], True),
        ("All", [{"TopicName": "CFX.Materials.Storage"}, {"TopicName": "CFX.Production"}], False),
        ("All", [{"TopicName": "CFX.Production", "SupportedMessages": ["CFX.Production.WorkStarted"]}], True),
        ("Any", [{"TopicName": "CFX.Production", "SupportedMessages": ["CFX.Production.UnitsArrived"]}], False),
    ],
)
def test_who_is_there_answers_only_when_its_topic_filter_matches(
    query: str, topics: list[dict[str, object]], answers: bool
) -> None:
    response = ask("CFX.WhoIsThereRequest", {"SupportedTopicQueryType": query, "SupportedTopics": topics})
    assert (response is not None) == answers
    if response is not None:
        assert response["MessageName"] == "CFX.WhoIsThereResponse"


def test_any_other_request_gets_not_supported_as_the_sdk_writes_it() -> None:
    known = ask("CFX.Production.GetActiveRecipeRequest", {})
    unknown = ask("Acme.Whatever", {})
    assert known is not None and unknown is not None
    assert known["MessageName"] == unknown["MessageName"] == "CFX.NotSupportedResponse"
    assert known["MessageBody"] == {"RequestResult": {"Result": "Failed", "ResultCode": 0,
                                                      "Message": "Not implemented message"}}
    assert unknown["MessageBody"]["RequestResult"]["Message"] == "Unknown message"  # type: ignore[index]


def test_gateway_events_have_no_cfx_message() -> None:
    for kind in ("connection_lost", "connection_restored", "buffer_dropped", "file_rejected", "collection_event"):
        assert cm.map_record(record({"type": kind}), HANDLE) == []


def test_amqp_properties_are_the_sdks_and_gzip_is_announced() -> None:
    env = cm.map_record(record({"type": "fault_cleared", "fault_occurrence_id": str(uuid.uuid4())}), HANDLE)[0]
    plain = cm.to_message(env, "json")
    assert plain.subject == f"{HANDLE}.CFX.ResourcePerformance.FaultCleared"
    assert plain.content_encoding is None
    assert plain.application_properties == {"cfx-topic": "CFX.ResourcePerformance",
                                            "cfx-message": "CFX.ResourcePerformance.FaultCleared",
                                            "cfx-handle": HANDLE, "cfx-target": None}
    assert orjson.loads(plain.body) == env
    zipped = cm.to_message(env, "gzip")
    assert zipped.content_encoding == "gzip"
    assert orjson.loads(gzip.decompress(zipped.body)) == env


def test_heartbeat_carries_its_frequency_as_a_time_span_and_active_faults() -> None:
    env = cm.heartbeat(HANDLE, 60.0, [{"FaultOccurrenceId": "x"}], now="2026-11-24T10:00:00.000+00:00",
                       unique=str(uuid.uuid4()))
    assert env["MessageName"] == "CFX.Heartbeat"
    assert env["MessageBody"]["CFXHandle"] == HANDLE
    assert env["MessageBody"]["HeartbeatFrequency"] == "00:01:00"
    assert env["MessageBody"]["ActiveFaults"] == [{"FaultOccurrenceId": "x"}]


def test_time_span_writes_days_like_dotnet() -> None:
    assert cm.time_span(0) == "00:00:00"
    assert cm.time_span(3661) == "01:01:01"
    assert cm.time_span(90061) == "1.01:01:01"
