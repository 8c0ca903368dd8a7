"""Third-party adapters: an installed distribution with an `emsedge.adapters` entry point is configurable."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emsedge.adapters import factory_for
from emsedge.adapters.base import AdapterContext
from emsedge.config import PluginEquipment, load_config
from emsedge.errors import ConfigError

PLUGIN = '''
from emsedge.schema import reading, telemetry

class SerialScale:
    """A polled adapter from another package: reads nothing, reports its configured options."""
    def __init__(self, ctx):
        self.ctx = ctx
    async def __aenter__(self):
        return self
    async def __aexit__(self, *exc):
        return None
    async def poll(self):
        eq = self.ctx.equipment
        return [telemetry(eq.id, eq.type, [reading("port", eq.connection["port"], ts="t")], "t")]
    def offline_records(self, reason):
        return []
'''


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[None]:
    (tmp_path / "serial_scale_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "serial_scale_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: serial-scale-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[emsedge.adapters]\nserial_scale = serial_scale_plugin:SerialScale\n")
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("serial_scale_plugin", None)


def _config(tmp_path: Path, adapter: str) -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: gw, site: s, line: l}\n"
        f"equipment:\n  - {{id: scale-1, type: other, adapter: {adapter}, connection: {{port: /dev/ttyS0}},\n"
        "     signals: [{name: weight, register: 3}]}\n"
    )
    return f


@pytest.mark.asyncio
async def test_an_installed_plugin_adapter_is_configured_and_built(installed_plugin: None, tmp_path: Path) -> None:
    settings = load_config(_config(tmp_path, "serial_scale"))
    equipment = settings.equipment[0]
    assert isinstance(equipment, PluginEquipment)
    assert equipment.signals[0].model_extra == {"register": 3}

    async def emit(records: object) -> None:
        return None

    adapter = factory_for("serial_scale")(AdapterContext(equipment=equipment, emit=emit))
    records = await adapter.poll()  # type: ignore[union-attr]
    assert records[0].body["readings"][0]["value"] == "/dev/ttyS0"


def test_an_adapter_that_is_not_installed_is_named_with_what_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, "serial_scael"))
    msg = str(info.value)
    assert "c.yaml:3:" in msg and "unknown adapter 'serial_scael'" in msg and "built in: modbus, opcua, hsms" in msg
