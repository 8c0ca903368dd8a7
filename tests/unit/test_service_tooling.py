"""Technician tooling: the committed JSON Schema, what it accepts and rejects, and `emsedge buffer`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
import yaml

from emsedge.buffer import Buffer
from emsedge.config import BufferConfig
from emsedge.schema import reading, telemetry
from emsedge.tooling import main_buffer, main_config_schema, render_schema
from emsedge.topics import Topics

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "config.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_up_to_date_with_the_config_models() -> None:
    assert SCHEMA_FILE.read_text() == render_schema(), (
        "docs/config.schema.json is stale: run `emsedge config-schema -o docs/config.schema.json`"
    )


def test_config_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_config_schema([]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].endswith("2020-12/schema")
    assert "gateway" in printed["required"]


def gateway_configs() -> list[Path]:
    """Example configs of the gateway (simulator configs in the same folder have no `gateway:`)."""
    out = []
    for path in sorted((REPO / "config").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "gateway" in data:
            out.append(path)
    return out


def test_there_are_example_configs_to_check() -> None:
    assert gateway_configs()


@pytest.mark.parametrize("example", gateway_configs(), ids=lambda p: p.name)
def test_schema_accepts_every_example_config_and_examples_reference_it(
    example: Path, validator: jsonschema.Draft202012Validator
) -> None:
    text = example.read_text()
    data = yaml.safe_load(text)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
    assert "# yaml-language-server: $schema=../docs/config.schema.json" in text


def base_config() -> dict[str, Any]:
    return {
        "gateway": {"id": "gw", "site": "s", "line": "l"},
        "buffer": {"linger": "5ms", "max_bytes": "512MiB"},
        "equipment": [
            {"id": "reflow-1", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "10.0.0.5"},
             "poll_interval": "1s", "signals": [{"name": "t", "table": "holding", "address": 0, "type": "float32"}]},
            {"id": "aoi-1", "profile": "aoi/generic"},
        ],
    }


def test_schema_accepts_durations_sizes_and_profile_entries(validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors(base_config())) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mqtt", "qso"), 1),                                      # misspelt key
        (("buffer", "linger"), "fast"),                            # not a duration
        (("logging", "format"), "xml"),                            # not an allowed value
        (("equipment", 0, "signals", 0, "table"), "registers"),    # wrong Modbus table
        (("equipment", 0, "adapter"), "profibus"),                 # unknown adapter
        (("equipment", 0, "connection", "port"), 70000),           # port out of range
    ],
)
def test_schema_rejects_broken_configs(
    validator: jsonschema.Draft202012Validator, path: tuple[str | int, ...], value: Any
) -> None:
    config = base_config()
    node: Any = config
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = value
    assert list(validator.iter_errors(config)), f"schema accepted {path}={value!r}"


def test_schema_rejects_a_config_without_gateway(validator: jsonschema.Draft202012Validator) -> None:
    assert any("gateway" in e.message for e in validator.iter_errors({"equipment": []}))


async def fill_buffer(path: Path, n: int) -> None:
    buffer = Buffer(BufferConfig(path=path, linger=0.001), gateway="gw", topics=Topics("ems/s/smt/l"))
    async with anyio.create_task_group() as tg:
        await tg.start(buffer.run)
        for i in range(n):
            readings = [reading("t", float(i), ts="2026-01-01T00:00:00.000Z")]
            await buffer.append([telemetry("reflow-1", "reflow_oven", readings)])
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_buffer_stats_export_and_purge_work_on_a_buffer_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "buffer.db"
    await fill_buffer(path, 3)
    capsys.readouterr()  # the buffer's own log lines
    assert main_buffer(["stats", "--json", "--path", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 3
    assert main_buffer(["export", "--path", str(path)]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in exported] == [1, 2, 3]
    assert json.loads(exported[0]["payload"])["readings"][0]["value"] == 0.0
    assert main_buffer(["purge", "--path", str(path)]) == 2  # not a terminal and no --yes: refused
    assert main_buffer(["purge", "--yes", "--path", str(path)]) == 0
    capsys.readouterr()
    assert main_buffer(["stats", "--json", "--path", str(path)]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["records"] == 0
    assert after["next_seq"] == stats["next_seq"]  # seq never goes back


def test_buffer_command_reports_a_missing_file_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_buffer(["stats", "--path", str(tmp_path / "nope.db")]) == 1
    assert "no buffer file" in capsys.readouterr().err
