"""`mqtt.telemetry_format: compact` end to end: `emsedge run` + real mosquitto + a Modbus equipment process.
A subscriber that expands the compact messages with the retained meta gets the same readings (values,
units, quality) as one reading a `full` run, and the bad readings of a lost machine keep their status."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
from support import Mosquitto, Subscriber, free_port
from support.daemon import Daemon, Equipment, gateway_config, wait_until

from emsedge import schema


def readings_of(message: dict[str, Any]) -> dict[str, tuple[Any, Any, Any]]:
    return {r["signal"]: (r["value"], r["unit"], r["quality"]) for r in message["readings"]}


def run(tmp: Path, mosquitto: Mosquitto, subscriber: Subscriber, equipment: Equipment, fmt: str) -> None:
    (tmp / fmt).mkdir()
    config = gateway_config(tmp / fmt, mosquitto.url, equipment.port, mqtt={"telemetry_format": fmt})
    daemon = Daemon(config, tmp / fmt / "daemon.log")
    daemon.start()
    try:
        subscriber.wait_for(lambda ps: sum(p["schema"].startswith(f"emsedge/telemetry{'' if fmt == 'full' else '-'}")
                                           for p in ps) >= 5, suffix="/reflow-1/telemetry")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_compact_telemetry_expands_to_what_a_full_run_delivers(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, equipment: Equipment
) -> None:
    run(tmp_path, mosquitto, subscriber, equipment, "full")
    full = subscriber.payloads("/reflow-1/telemetry")
    assert all(p["schema"] == schema.SCHEMA_TELEMETRY for p in full)
    assert subscriber.payloads("/reflow-1/meta") == []  # full: no meta topic
    run(tmp_path, mosquitto, subscriber, equipment, "compact")

    with subscriber.lock:
        received = list(subscriber.messages)
    metas: dict[str, dict[str, Any]] = {}
    expanded: list[dict[str, Any]] = []
    compact_bytes = full_bytes = 0
    for topic, payload, _ in received:
        if topic.endswith("/reflow-1/meta"):
            metas["reflow-1"] = orjson.loads(payload)
        elif topic.endswith("/reflow-1/telemetry"):
            message = orjson.loads(payload)
            if message["schema"] == schema.SCHEMA_TELEMETRY_COMPACT:
                assert "reflow-1" in metas, "a compact message arrived before its meta"
                expanded.append(schema.expand_compact(message, metas["reflow-1"]))
                compact_bytes += len(payload)
            else:
                full_bytes += len(payload)
    assert len(expanded) >= 5
    assert metas["reflow-1"]["signals"] == {
        "zone1_top_temp": {"unit": "Cel", "type": "float32"}, "conveyor_speed": {"unit": "cm/min", "type": "uint16"},
        "board_count": {"unit": None, "type": "uint32"}}
    for message in expanded:
        schema.TelemetryMessage.model_validate(message)
        assert readings_of(message) == readings_of(full[0])
        assert all(r["ts"] == message["ts"] for r in message["readings"])
    assert readings_of(full[0])["zone1_top_temp"] == (215.5, "Cel", "good")
    assert compact_bytes / len(expanded) < full_bytes / len(full)

    retained = Subscriber(mosquitto.port, topic="ems/plant-t/smt/line-t/+/meta")  # a consumer joining later
    try:
        got = retained.wait_for(lambda ps: len(ps) == 1, timeout=10)
        assert got[0] == metas["reflow-1"]
        assert retained.messages[0][2] is True
    finally:
        retained.close()


def test_bad_readings_of_a_lost_machine_keep_quality_and_status_in_compact_form(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, equipment: Equipment
) -> None:
    config = gateway_config(tmp_path, mosquitto.url, equipment.port, mqtt={"telemetry_format": "compact"})
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        subscriber.wait_for(lambda ps: len(ps) >= 2, suffix="/reflow-1/telemetry")
        equipment.stop()
        got = subscriber.wait_for(lambda ps: any("x" in p for p in ps), suffix="/reflow-1/telemetry")
        meta = subscriber.payloads("/reflow-1/meta")[-1]
        bad = next(schema.expand_compact(p, meta) for p in got if "x" in p)
        assert {r["quality"] for r in bad["readings"]} == {"bad"}
        assert all(r["value"] is None and isinstance(r.get("status"), str) for r in bad["readings"])
        units = {r["signal"]: r["unit"] for r in bad["readings"]}
        assert units == {"zone1_top_temp": "Cel", "conveyor_speed": "cm/min", "board_count": None}
    finally:
        daemon.kill()


def stored_telemetry(buffer: Path) -> int:
    """Telemetry records waiting in a running gateway's buffer (read-only; the buffer runs in WAL mode)."""
    try:
        with closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=1)) as db:
            row = db.execute("SELECT count(*) FROM records WHERE topic LIKE '%/telemetry'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def test_a_compact_backlog_is_delivered_with_its_meta_after_a_restart_in_the_full_format(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, equipment: Equipment
) -> None:
    nowhere = f"mqtt://127.0.0.1:{free_port()}"  # no broker: everything stays in the buffer
    config = gateway_config(tmp_path, nowhere, equipment.port, mqtt={"telemetry_format": "compact"})
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: stored_telemetry(tmp_path / "buffer.db") >= 5, 60)
    finally:
        daemon.kill()
    gateway_config(tmp_path, mosquitto.url, equipment.port, mqtt={"telemetry_format": "full"})
    daemon.start()
    try:
        subscriber.wait_for(lambda ps: any(p["schema"] == schema.SCHEMA_TELEMETRY for p in ps), 60,
                            suffix="/reflow-1/telemetry")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    with subscriber.lock:
        received = [(t, p) for t, p, _ in subscriber.messages if "/reflow-1/" in t]
    meta: dict[str, Any] | None = None
    compact = 0
    for topic, payload in received:
        if topic.endswith("/meta"):
            meta = orjson.loads(payload)
        elif topic.endswith("/telemetry") and orjson.loads(payload)["schema"] == schema.SCHEMA_TELEMETRY_COMPACT:
            assert meta is not None, "a compact message of the backlog arrived before its meta"
            expanded = schema.expand_compact(orjson.loads(payload), meta)
            assert expanded["replayed"] is True
            assert readings_of(expanded)["zone1_top_temp"] == (215.5, "Cel", "good")
            compact += 1
    assert compact >= 5
