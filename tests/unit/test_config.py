from __future__ import annotations

from pathlib import Path

import pytest

from emsedge.config import load_config, parse_duration
from emsedge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), ("1h", 3600.0), (3, 3.0)])
def test_durations_accept_the_documented_units(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_example_config_is_valid() -> None:
    settings = load_config(REPO / "config" / "example.yaml")
    assert settings.topic_prefix == "ems/plant-a/smt/line-1"
    assert settings.equipment[0].poll_interval == 1.0


def _errors(tmp_path: Path, text: str) -> str:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    return str(info.value)


GOOD_HEAD = "gateway: {id: gw, site: s, line: l}\n"


def test_unknown_field_names_file_line_field_and_suggests(tmp_path: Path) -> None:
    msg = _errors(tmp_path, GOOD_HEAD + "mqtt: {url: 'mqtt://127.0.0.1:1883', qso: 1}\n")
    assert f"{tmp_path / 'bad.yaml'}:2:" in msg
    assert "mqtt.qso" in msg and "did you mean 'qos'" in msg


def test_bad_duration_is_located(tmp_path: Path) -> None:
    msg = _errors(tmp_path, GOOD_HEAD + """equipment:
  - id: r1
    type: reflow_oven
    adapter: modbus
    connection: {host: 127.0.0.1}
    poll_interval: 1x
    signals: [{name: a, table: holding, address: 0}]
""")
    assert "bad.yaml:7:" in msg and "equipment[0].poll_interval" in msg and "500ms" in msg


def test_coil_with_register_type_is_refused_with_hint(tmp_path: Path) -> None:
    msg = _errors(tmp_path, GOOD_HEAD + """equipment:
  - {id: r1, type: reflow_oven, adapter: modbus, connection: {host: h},
     signals: [{name: a, table: coil, address: 0, type: uint16}]}
""")
    assert "equipment[0].signals[0]" in msg and "use type: bool" in msg


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    msg = _errors(tmp_path, GOOD_HEAD + "mqtt: {url: [\n")
    assert "YAML syntax error" in msg and "bad.yaml:" in msg


def test_password_over_plain_tcp_to_remote_broker_is_refused(tmp_path: Path) -> None:
    msg = _errors(tmp_path, GOOD_HEAD + "mqtt: {url: 'mqtt://10.1.2.3:1883', username: u, password: p}\n")
    assert "clear text" in msg and "allow_insecure" in msg


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(GOOD_HEAD + "mqtt: {url: 'mqtt://127.0.0.1:1883', qos: 1}\n")
    s = load_config(f, environ={"EMSEDGE_MQTT__QOS": "0", "EMSEDGE_MQTT__PASSWORD": "sekret"})
    assert s.mqtt.qos == 0
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "sekret"
    assert "sekret" not in repr(s)


def test_unknown_adapter_is_named(tmp_path: Path) -> None:
    msg = _errors(tmp_path, GOOD_HEAD + "equipment:\n  - {id: x, type: aoi, adapter: serial}\n")
    assert "equipment[0]" in msg and "modbus" in msg
