"""The example adapter of docs/writing-an-adapter.md (`examples/adapter-json-file/`), pip-installed as a
package of its own and used only through its entry point: `check-config` accepts it and locates a typo in
its own fields, `config-schema` holds its model, and a real gateway publishes the file's values to a real
mosquitto.

The package goes into a temporary `--target` folder put on PYTHONPATH, so the test venv stays unchanged
(other tests assert which adapters are installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, Mosquitto, Subscriber
from support.daemon import EMSEDGE, Daemon

from emsedge.cli import EX_CONFIG

EXAMPLE = REPO / "examples" / "adapter-json-file"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an `emsedge` process that has the example package installed."""
    work = tmp_path_factory.mktemp("example-adapter")
    source = work / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "emsedge_json_file" / "adapter.py").is_file()
    python_path = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}


def _config(tmp_path: Path, values: Path, broker_url: str = "mqtt://127.0.0.1:1883", signals: str = "") -> Path:
    text = f"""\
gateway: {{id: test-gw, site: plant-t, line: line-t}}
mqtt: {{url: "{broker_url}", keepalive: 2s, backoff: {{initial: 100ms, max: 500ms}}}}
buffer: {{path: "{tmp_path / 'buffer.db'}", linger: 5ms}}
http: {{listen: null}}
logging: {{format: json}}
equipment:
  - id: line-pc-1
    type: other
    adapter: json_file
    path: "{values}"
    poll_interval: 100ms
    backoff: {{initial: 100ms, max: 500ms}}
    signals:
{signals or '''      - {name: oven_temp, unit: Cel}
      - {name: boards, key: counters.boards}
'''}"""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def _emsedge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EMSEDGE, *args], capture_output=True, text=True, env=env, timeout=60)


def test_check_config_accepts_the_example_adapter_and_locates_a_typo_in_its_own_field(
    example_env: dict[str, str], tmp_path: Path
) -> None:
    good = _emsedge(example_env, "check-config", str(_config(tmp_path, tmp_path / "values.json")))
    assert good.returncode == 0, good.stderr
    assert "line-pc-1" in good.stdout and "json_file" in good.stdout and "2 signals" in good.stdout

    bad_file = _config(tmp_path, tmp_path / "values.json", signals="      - {name: oven_temp, kye: temp}\n")
    bad = _emsedge(example_env, "check-config", str(bad_file))
    assert bad.returncode == EX_CONFIG
    line = next(i for i, text in enumerate(bad_file.read_text().splitlines(), 1) if "kye:" in text)
    assert f"{bad_file}:{line}:" in bad.stderr
    assert "equipment[0].signals[0].kye: unknown field 'kye' (hint: did you mean 'key'?" in bad.stderr

    readme = (EXAMPLE / "emsedge_json_file" / "README.md").read_text()
    documented = tmp_path / "readme.yaml"
    documented.write_text("gateway: {id: gw, site: s, line: l}\n" + readme.split("```yaml\n", 1)[1].split("```")[0])
    assert _emsedge(example_env, "check-config", str(documented)).returncode == 0  # the README's example

    # Without the package the same config names the adapter as unknown (the entry point is the only link).
    missing = _emsedge({**os.environ}, "check-config", str(_config(tmp_path, tmp_path / "values.json")))
    assert missing.returncode == EX_CONFIG and "unknown adapter 'json_file'" in missing.stderr


def test_the_config_schema_contains_the_example_model(example_env: dict[str, str]) -> None:
    result = _emsedge(example_env, "config-schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    model = schema["$defs"]["JsonFileEquipment"]
    assert model["properties"]["adapter"]["const"] == "json_file"
    assert model["additionalProperties"] is False
    assert all("description" in field for field in model["properties"].values())
    assert {"$ref": "#/$defs/JsonFileEquipment"} in schema["properties"]["equipment"]["items"]["anyOf"][0]["oneOf"]


def test_a_gateway_run_publishes_the_values_of_the_json_file(
    example_env: dict[str, str], tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber
) -> None:
    values = tmp_path / "values.json"

    def write(document: dict[str, object]) -> None:  # write and rename, as the adapter's README asks
        tmp = values.with_suffix(".tmp")
        tmp.write_text(json.dumps(document))
        tmp.replace(values)

    write({"oven_temp": 245.1, "counters": {"boards": 1402}})
    daemon = Daemon(_config(tmp_path, values, mosquitto.url), tmp_path / "daemon.log",
                    env={"PYTHONPATH": example_env["PYTHONPATH"]})
    daemon.start()
    try:
        def readings(payloads: list[dict[str, object]]) -> list[dict[str, object]]:
            return [{r["signal"]: r["value"] for r in p["readings"]} for p in payloads]  # type: ignore[attr-defined]

        got = subscriber.wait_for(bool, suffix="/line-pc-1/telemetry")
        assert readings(got)[0] == {"oven_temp": 245.1, "boards": 1402}, daemon.log()
        write({"oven_temp": 250.5, "counters": {"boards": 1403}})
        subscriber.wait_for(
            lambda ps: {"oven_temp": 250.5, "boards": 1403} in readings(ps), suffix="/line-pc-1/telemetry"
        )
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    events = [p["event"]["type"] for p in subscriber.payloads("/line-pc-1/events")]
    assert events[0] == "connection_restored"
