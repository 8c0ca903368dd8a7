"""Golden config mistakes: a folder per case under tests/golden/config/ with the user's `config.yaml`
(and any profiles it uses in an `adapters/` folder beside it) and `expected.txt`, the exact problems
`load_config` reports, one per line, with file:line:column: field (paths relative to the case folder)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from emsedge.config import load_config
from emsedge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CASES = sorted(p for p in (REPO / "tests" / "golden" / "config").iterdir() if p.is_dir())
# Mistakes only the loader can see: the schema checks one value at a time, not YAML syntax or uniqueness.
SCHEMA_BLIND = {"duplicate_equipment_id", "duplicate_key", "duplicate_signal_name", "host_with_port",
                "tab_in_indentation", "negative_duration",
                # What a broker refuses (characters, lengths, ports, credentials) and what the wire cannot hold.
                "control_character_in_gateway_site", "noncharacter_in_topic_prefix",
                "gateway_site_too_long_for_a_topic", "equipment_id_too_long_for_a_topic",
                "buffer_max_bytes_below_one_record", "mqtt_url_port_out_of_range", "credentials_in_mqtt_url",
                "trigger_field_integer_over_64_bits", "opcua_url_port_out_of_range"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_config_mistake_is_reported_at_the_users_line_with_the_expected_message(case: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(case / "config.yaml")
    problems = [p.replace(f"{case}/", "") for p in info.value.problems]
    assert problems == (case / "expected.txt").read_text().splitlines()


@pytest.mark.parametrize("case", [c for c in CASES if c.name not in SCHEMA_BLIND],
                         ids=[c.name for c in CASES if c.name not in SCHEMA_BLIND])
def test_the_json_schema_refuses_the_same_mistake(case: Path) -> None:
    schema = json.loads((REPO / "docs" / "config.schema.json").read_text())
    document = yaml.safe_load((case / "config.yaml").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document))


def test_the_json_schema_accepts_every_shipped_config_and_lists_the_profiles() -> None:
    schema = json.loads((REPO / "docs" / "config.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for config in (REPO / "config").glob("*.yaml"):
        if config.name == "virtual-line.yaml":
            continue
        assert not list(validator.iter_errors(yaml.safe_load(config.read_text()))), config.name
    from_profile = schema["properties"]["equipment"]["items"]["anyOf"][1]
    assert "reflow/virtual-reflow" in from_profile["properties"]["profile"]["examples"]


def test_a_password_in_the_broker_url_is_never_echoed() -> None:
    case = REPO / "tests" / "golden" / "config" / "credentials_in_mqtt_url"
    assert "s3cret-pw" in (case / "config.yaml").read_text()
    with pytest.raises(ConfigError) as info:
        load_config(case / "config.yaml")
    assert "s3cret-pw" not in str(info.value) and "ems:" not in str(info.value)


def test_a_latin1_password_file_is_refused_at_its_line(tmp_path: Path) -> None:
    secret = tmp_path / "broker.pw"
    secret.write_bytes("passw\u00f6rd\n".encode("latin-1"))
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {id: gw, site: plant, line: line-1}\n"
        f"mqtt: {{url: 'mqtts://broker.plant.local:8883', username: ems, password_file: '{secret}'}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert problem.startswith(f"{config}:2:") and "mqtt.password_file:" in problem
    assert "not UTF-8 text (byte 0xf6 at offset 5)" in problem and "hint: save the file as UTF-8" in problem


def test_a_latin1_http_token_file_is_refused_at_its_line(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"t\xf6ken\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {id: gw, site: plant, line: line-1}\n"
        f"http: {{listen: '127.0.0.1:9108', auth: {{bearer_token_file: '{token}'}}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert "http.auth.bearer_token_file:" in problem and "not UTF-8 text (byte 0xf6 at offset 1)" in problem
