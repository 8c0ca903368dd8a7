"""`emsedge watch` against a real mosquitto: the one-shot JSON frame shows the gateway's backlog, how old
the newest message is, every machine's state and latest values; credentials are used and a refused
login is reported."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from support import Mosquitto

PREFIX = "ems/plant-w/smt/line-w"


def iso(seconds_ago: float) -> str:
    t = time.time() - seconds_ago
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def publish_retained(port: int, messages: list[tuple[str, dict[str, Any]]],
                     auth: tuple[str, str] | None = None) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watch-test-publisher")
    if auth:
        client.username_pw_set(*auth)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def line_messages() -> list[tuple[str, dict[str, Any]]]:
    status = {"schema": "emsedge/status@1", "gateway": "gw", "state": "online", "ts": iso(1), "backlog": 1234,
              "backlog_oldest_age_s": 42.0}
    telemetry = {"schema": "emsedge/telemetry@1", "id": "m-1", "seq": 7, "gateway": "gw", "equipment": "reflow-1",
                 "equipment_type": "reflow_oven", "ts": iso(30),
                 "readings": [{"signal": "zone1_top_actual", "value": 247.05, "unit": "Cel", "quality": "good",
                               "ts": iso(30)}]}
    state = {"schema": "emsedge/event@1", "id": "m-2", "seq": 8, "gateway": "gw", "equipment": "reflow-1",
             "equipment_type": "reflow_oven", "ts": iso(20),
             "event": {"type": "station_state_changed", "state": 1100, "state_name": "productive"}}
    return [(f"{PREFIX}/_gateway/status", status), (f"{PREFIX}/reflow-1/telemetry", telemetry),
            (f"{PREFIX}/reflow-1/events", state)]


def watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emsedge.cli", "watch", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_watch_once_json_shows_backlog_newest_age_states_and_values(mosquitto: Mosquitto) -> None:
    publish_retained(mosquitto.port, line_messages())
    result = watch("--broker", mosquitto.url, "--prefix", PREFIX, "--once", "--json", "--wait", "10")
    assert result.returncode == 0, result.stderr
    frame = json.loads(result.stdout)
    assert frame["gateway"] == "online" and frame["backlog"] == 1234
    assert frame["messages"] == 2
    assert 19 <= frame["newest_message_age_s"] < 50  # the newest data message was stamped 20 s ago
    reflow = frame["equipment"]["reflow-1"]
    assert reflow["latest"] == {"zone1_top_actual": 247.05}
    assert reflow["state"] == "productive (1100)" and reflow["link"] == "up"


def test_watch_once_text_frame_names_the_backlog_and_the_newest_message_age(mosquitto: Mosquitto) -> None:
    publish_retained(mosquitto.port, line_messages())
    result = watch("--broker", mosquitto.url, "--prefix", PREFIX, "--once", "--wait", "10")
    assert result.returncode == 0, result.stderr
    assert "backlog 1234" in result.stdout and "newest message" in result.stdout
    assert "reflow-1" in result.stdout and "zone1_top_actual=247.1 Cel" in result.stdout


def test_watch_logs_in_with_credentials_and_reports_a_refused_login(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "tech", "s3cret"], check=True,
                   capture_output=True)
    passwords.chmod(0o600)
    broker = Mosquitto(workdir=tmp_path, extra_config=f"allow_anonymous false\npassword_file {passwords}")
    broker.start()
    try:
        publish_retained(broker.port, line_messages(), auth=("tech", "s3cret"))
        secret = tmp_path / "pw"
        secret.write_text("s3cret\n")
        ok = watch("--broker", broker.url, "--prefix", PREFIX, "--username", "tech", "--password-file", str(secret),
                   "--once", "--json", "--wait", "10")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["backlog"] == 1234
        secret.write_text("wrong\n")
        refused = watch("--broker", broker.url, "--prefix", PREFIX, "--username", "tech", "--password-file",
                        str(secret), "--once", "--json", "--wait", "5")
        assert refused.returncode == 1
        assert "refused the connection" in refused.stderr
        assert "wrong" not in refused.stderr + refused.stdout
    finally:
        broker.stop()


def test_watch_without_a_broker_says_so(tmp_path: Path) -> None:
    result = watch("--prefix", PREFIX, "--once")
    assert result.returncode == 2 and "--broker" in result.stderr
