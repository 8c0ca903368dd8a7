"""Third-party adapters: an installed distribution with an `emsedge.adapters` entry point is configured
with its own typed model, and gets the same located errors and JSON Schema as a built-in adapter."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emsedge.adapters import refresh, registry, spec_for
from emsedge.adapters.base import AdapterContext, PolledAdapter
from emsedge.config import load_config
from emsedge.errors import ConfigError
from emsedge.tooling import config_schema

PLUGIN = '''
from typing import Literal

from pydantic import Field

from emsedge.adapters.spec import AdapterSpec
from emsedge.config import ConfigModel, EquipmentBase, SignalCommon
from emsedge.schema import reading, telemetry


class ScaleConnection(ConfigModel):
    port: str = Field(description="Serial port.")
    baud: int = Field(9600, description="Baud rate.")


class ScaleSignal(SignalCommon):
    channel: int = Field(ge=0, description="Channel of the value.")


class ScaleEquipment(EquipmentBase):
    adapter: Literal["serial_scale"] = Field(description="A serial scale.")
    connection: ScaleConnection = Field(description="The serial line.")
    signals: list[ScaleSignal] = Field(min_length=1, description="Values read.")


class SerialScale:
    """A polled adapter from another package: reads nothing, reports its configured port."""
    def __init__(self, config, ctx):
        self.config = config
    async def __aenter__(self):
        return self
    async def __aexit__(self, *exc):
        return None
    async def poll(self):
        eq = self.config
        return [telemetry(eq.id, eq.type, [reading("port", eq.connection.port, ts="t")], "t")]
    def offline_records(self, reason):
        return []


spec = AdapterSpec(name="serial_scale", config_model=ScaleEquipment, build=SerialScale)
not_a_spec = "a factory function from before AdapterSpec"
'''


def _install(tmp_path: Path, entry_points: str) -> None:
    (tmp_path / "serial_scale_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "serial_scale_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: serial-scale-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[emsedge.adapters]\n{entry_points}\n")
    sys.path.insert(0, str(tmp_path))


@pytest.fixture
def uninstall(tmp_path: Path) -> Iterator[None]:
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("serial_scale_plugin", None)
    refresh()


@pytest.fixture
def installed_plugin(tmp_path: Path, uninstall: None) -> None:
    _install(tmp_path, "serial_scale = serial_scale_plugin:spec")


def _config(tmp_path: Path, adapter: str, signal: str = "{name: weight, channel: 3}") -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: gw, site: s, line: l}\n"
        f"equipment:\n  - {{id: scale-1, type: other, adapter: {adapter}, connection: {{port: /dev/ttyS0}},\n"
        f"     signals: [{signal}]}}\n"
    )
    return f


@pytest.mark.asyncio
async def test_an_installed_plugin_adapter_is_configured_with_its_own_model_and_built(
    installed_plugin: None, tmp_path: Path
) -> None:
    settings = load_config(_config(tmp_path, "serial_scale"))
    equipment = settings.equipment[0]
    assert type(equipment).__name__ == "ScaleEquipment"
    assert equipment.connection.port == "/dev/ttyS0" and equipment.connection.baud == 9600  # type: ignore[attr-defined]
    assert equipment.signals[0].channel == 3  # type: ignore[attr-defined]
    assert registry().origin["serial_scale"] == "serial-scale-plugin"

    async def emit(records: object) -> None:
        return None

    adapter = spec_for("serial_scale").build(equipment, AdapterContext(equipment=equipment, emit=emit))
    assert isinstance(adapter, PolledAdapter)
    records = await adapter.poll()
    assert records[0].body["readings"][0]["value"] == "/dev/ttyS0"


def test_a_typo_in_a_plugin_field_is_located_with_a_hint(installed_plugin: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, "serial_scale", "{name: weight, chanel: 3}"))
    msg = str(info.value)
    assert "c.yaml:4:" in msg and "equipment[0].signals[0].chanel: unknown field 'chanel'" in msg
    assert "did you mean 'channel'?" in msg


def test_the_json_schema_holds_the_plugin_model(installed_plugin: None) -> None:
    refresh()
    schema = config_schema()
    assert "ScaleEquipment" in schema["$defs"]
    refs = {alt["$ref"] for alt in schema["properties"]["equipment"]["items"]["anyOf"][0]["oneOf"]}
    assert "#/$defs/ScaleEquipment" in refs and "#/$defs/ModbusEquipment" in refs
    assert schema["$defs"]["ScaleSignal"]["properties"]["channel"]["description"] == "Channel of the value."


def test_an_adapter_that_is_not_installed_is_named_with_what_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, "serial_scael"))
    msg = str(info.value)
    assert "c.yaml:3:" in msg and "equipment[0].adapter: unknown adapter 'serial_scael'" in msg
    assert "built in: hsms, modbus, opcua" in msg and "installed plugins: none" in msg


def test_an_entry_point_that_is_not_a_spec_is_reported_when_a_config_uses_it(
    tmp_path: Path, uninstall: None
) -> None:
    _install(tmp_path, "serial_scale = serial_scale_plugin:not_a_spec")
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, "serial_scale"))
    msg = str(info.value)
    assert "adapter 'serial_scale' is installed but cannot be loaded" in msg and "not an" in msg
    assert "modbus" in registry().specs  # the built-ins are unaffected


def test_without_registered_built_ins_the_error_says_to_install_emsedge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emsedge.adapters as adapters  # noqa: PLC0415

    monkeypatch.setattr(adapters, "entry_points", lambda group: [])  # a source tree that was never installed
    try:
        refresh()
        with pytest.raises(ConfigError) as info:
            load_config(_config(tmp_path, "modbus"))
        assert "unknown adapter 'modbus' (built in: none; installed plugins: none)" in str(info.value)
        assert "install emsedge (pip install -e .)" in str(info.value)
    finally:
        monkeypatch.undo()
        refresh()
    assert "modbus" in registry().specs
