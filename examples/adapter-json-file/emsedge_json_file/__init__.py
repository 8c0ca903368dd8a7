"""emsedge adapter `json_file`: the values of a JSON file, read every `poll_interval`.

`spec` is what the entry point `json_file = "emsedge_json_file:spec"` registers. This module imports only
the config model, so the gateway can validate configs and render the JSON Schema without importing the
adapter; `build` imports it when a machine of this kind is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emsedge.adapters.spec import AdapterSpec
from emsedge_json_file.config import JsonFileEquipment

if TYPE_CHECKING:
    from emsedge.adapters.base import AdapterContext, PolledAdapter


def _build(config: JsonFileEquipment, ctx: AdapterContext) -> PolledAdapter:
    from emsedge_json_file.adapter import JsonFileAdapter  # noqa: PLC0415 - only when such a machine runs

    return JsonFileAdapter(config, ctx)


spec = AdapterSpec(
    name="json_file",
    config_model=JsonFileEquipment,
    build=_build,
    summary="Values from a JSON file that another program rewrites (read every poll_interval).",
)

__all__ = ["JsonFileEquipment", "spec"]
