"""The adapter registry: built-ins come through the `emsedge.adapters` entry points like any package, every
registered model is documented data, and reading the registry never imports a protocol library."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, Field

from emsedge.adapters import _check, registry, spec_for
from emsedge.adapters.base import AdapterContext
from emsedge.adapters.spec import AdapterSpec, HasPollDeadline, ReadsOnce, Stateful
from emsedge.config import EquipmentBase, Trigger, load_config
from emsedge.errors import ConfigError
from emsedge.schema import EMITTABLE_EVENTS, EventType
from emsedge.tooling import config_schema

REPO = Path(__file__).resolve().parents[2]
HEAD = "gateway: {id: gw, site: s, line: l}\nequipment:\n"


def test_the_built_in_adapters_are_registered_through_the_entry_point_group() -> None:
    points = {ep.name: ep.value for ep in entry_points(group="emsedge.adapters")
              if ep.dist is not None and ep.dist.name == "emsedge"}
    assert points == {name: f"emsedge.adapters.{name}:spec" for name in ("modbus", "opcua", "hsms", "result_files")}
    reg = registry()
    assert reg.builtin() == ["hsms", "modbus", "opcua", "result_files"] and not reg.broken
    for name, spec in reg.specs.items():
        assert spec.name == name and issubclass(spec.config_model, EquipmentBase)
        assert get_args(spec.config_model.model_fields["adapter"].annotation) == (name,)


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                _models(annotation, seen)
            stack.extend(get_args(annotation))


@pytest.mark.parametrize("name", ["modbus", "opcua", "hsms"])
def test_every_model_of_an_adapter_is_frozen_refuses_unknown_fields_and_describes_every_field(name: str) -> None:
    seen: set[type[BaseModel]] = set()
    _models(spec_for(name).config_model, seen)
    assert len(seen) >= 3
    for model in seen:
        assert model.model_config.get("extra") == "forbid", model
        assert model.model_config.get("frozen") is True, model
        undocumented = [f for f, info in model.model_fields.items() if not info.description]
        assert not undocumented, f"{model.__name__}: {undocumented}"


def test_validating_a_config_and_rendering_the_schema_import_no_protocol_library() -> None:
    code = (
        "import sys, json\n"
        "from emsedge.config import load_config\n"
        "from emsedge.tooling import config_schema\n"
        f"settings = load_config({str(REPO / 'config' / 'demo.yaml')!r})\n"
        "config_schema()\n"
        "loaded = lambda: [m for m in ('asyncua', 'pymodbus', 'secsgem', 'amqtt') if m in sys.modules]\n"
        "before = loaded()\n"
        "from emsedge.adapters import spec_for\n"
        "from emsedge.adapters.base import AdapterContext\n"
        "opcua = next(e for e in settings.equipment if e.adapter == 'opcua')\n"
        "async def emit(records): pass\n"
        "spec_for('opcua').build(opcua, AdapterContext(equipment=opcua, emit=emit))\n"
        "print(json.dumps({'adapters': sorted({e.adapter for e in settings.equipment}), 'before': before,\n"
        "                  'after': loaded()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["adapters"] == ["hsms", "modbus", "opcua", "result_files"]
    assert report["before"] == []
    assert report["after"] == ["asyncua"]  # building an OPC UA machine is what imports asyncua


def _problems(tmp_path: Path, text: str) -> str:
    f = tmp_path / "c.yaml"
    f.write_text(HEAD + text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    return str(info.value)


def test_an_unknown_adapter_is_located_at_its_key_with_the_closest_registered_name(tmp_path: Path) -> None:
    msg = _problems(tmp_path, "  - {id: r1, type: reflow_oven, adapter: modbsu, connection: {host: h}}\n")
    assert msg.startswith(f"{tmp_path / 'c.yaml'}:3:33: equipment[0].adapter: unknown adapter 'modbsu'; "
                          "did you mean 'modbus'? (built in: hsms, modbus, opcua, result_files; "
                          "installed plugins: none)")


def test_a_missing_adapter_names_every_registered_adapter(tmp_path: Path) -> None:
    msg = _problems(tmp_path, "  - {id: r1, type: reflow_oven}\n")
    assert msg == (f"{tmp_path / 'c.yaml'}:3:5: equipment[0]: required field 'adapter' is missing "
                   "(hint: say which adapter talks to this machine: adapter: hsms | modbus | opcua | result_files)")


def test_a_field_error_in_an_adapter_model_has_no_adapter_name_in_its_path(tmp_path: Path) -> None:
    msg = _problems(tmp_path, "  - {id: r1, type: reflow_oven, adapter: modbus, connection: {host: h, prot: 1},\n"
                              "     signals: [{name: a, table: holding, address: 0}]}\n")
    assert f"{tmp_path / 'c.yaml'}:3:" in msg
    assert "equipment[0].connection.prot: unknown field 'prot' (hint: did you mean 'port'?" in msg


class _Named(EquipmentBase):
    adapter: Literal["other_name"] = Field(description="x")


def test_a_spec_that_does_not_match_its_entry_point_or_model_is_refused() -> None:
    def build(config: Any, ctx: AdapterContext) -> Any:
        return None

    assert _check("mine", "not a spec") is not None
    assert "registered as 'mine'" in str(_check("mine", AdapterSpec(name="other", config_model=_Named, build=build)))
    assert "must declare `adapter: Literal['mine']`" in str(
        _check("mine", AdapterSpec(name="mine", config_model=_Named, build=build))
    )
    assert _check("other_name", AdapterSpec(name="other_name", config_model=_Named, build=build)) is None


def test_config_event_names_are_the_mes_contract_event_types() -> None:
    assert set(EMITTABLE_EVENTS) < set(EventType)
    for name in EMITTABLE_EVENTS:
        trigger = Trigger(on_change="s", emit=str(name))  # type: ignore[arg-type]
        assert trigger.emit is name
        assert trigger.model_dump(mode="json")["emit"] == str(name)  # serialises without a warning
        assert Trigger.model_validate(trigger.model_dump()) == trigger  # and round-trips
    with pytest.raises(ValueError, match=r"Input should be 'unit_processed', .* or 'station_state_changed'"):
        Trigger(on_change="s", emit="connection_lost")  # type: ignore[arg-type]
    schema = config_schema()
    assert schema["$defs"]["Trigger"]["properties"]["emit"]["enum"] == [str(e) for e in EMITTABLE_EVENTS]


def test_capabilities_are_protocols_checked_with_isinstance() -> None:
    from emsedge.adapters.modbus.adapter import ModbusAdapter  # noqa: PLC0415
    from emsedge.adapters.modbus.config import ModbusEquipment  # noqa: PLC0415

    equipment = ModbusEquipment.model_validate({
        "id": "r1", "type": "reflow_oven", "adapter": "modbus", "connection": {"host": "127.0.0.1"},
        "signals": [{"name": "a", "table": "holding", "address": 0}],
    })

    async def emit(records: object) -> None:
        return None

    adapter = ModbusAdapter(AdapterContext(equipment=equipment, emit=emit))
    assert isinstance(adapter, ReadsOnce) and isinstance(adapter, HasPollDeadline)
    assert not isinstance(adapter, Stateful)
    assert not isinstance(object(), ReadsOnce)
    assert get_origin(AdapterSpec[ModbusEquipment]) is AdapterSpec


@pytest.mark.parametrize("name", ["modbus", "opcua", "hsms"])
def test_the_example_in_each_adapter_readme_is_a_valid_config(name: str, tmp_path: Path) -> None:
    readme = (REPO / "src" / "emsedge" / "adapters" / name / "README.md").read_text()
    for heading in ("## Config", "## Events", "## Failure behaviour"):
        assert heading in readme
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "c.yaml"
    f.write_text("gateway: {id: gw, site: s, line: l}\n" + example)
    settings = load_config(f)
    assert [e.adapter for e in settings.equipment] == [name]


def test_the_adapter_guide_shows_the_example_package_as_it_is() -> None:
    guide = (REPO / "docs" / "writing-an-adapter.md").read_text()
    shown = 0
    for block in guide.split("```")[1::2]:
        lines = block.split("\n")
        first = lines[1] if len(lines) > 1 else ""
        if first.startswith("# examples/adapter-json-file/"):
            source = REPO / first.removeprefix("# ")
            assert "\n".join(lines[2:]).rstrip() == source.read_text().rstrip(), f"{source} changed: update the guide"
            shown += 1
    assert shown == 4
