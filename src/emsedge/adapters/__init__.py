"""Built-in adapters, looked up by the config's `adapter:` name; third-party ones by entry point.

A third-party package registers `[project.entry-points."emsedge.adapters"] name = "pkg.module:factory"`,
where `factory(ctx: AdapterContext) -> PolledAdapter | PushAdapter`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import cast

from emsedge.adapters.base import AdapterFactory

BUILTIN: dict[str, str] = {
    "modbus": "emsedge.adapters.modbus:ModbusAdapter",
    "opcua": "emsedge.adapters.opcua:build",
    "hsms": "emsedge.adapters.hsms:build",
}


def factory_for(name: str) -> AdapterFactory:
    target = BUILTIN.get(name)
    if target is None:
        for ep in entry_points(group="emsedge.adapters"):
            if ep.name == name:
                return cast(AdapterFactory, ep.load())
        raise KeyError(f"no adapter named {name!r}")
    module, _, attr = target.partition(":")
    return cast(AdapterFactory, getattr(importlib.import_module(module), attr))
