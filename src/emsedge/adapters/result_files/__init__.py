"""Tester result files (ICT, flying probe, functional test) -> `unit_tested` events. See README.md.

`spec` is what the `result_files` entry point registers. This module imports only the config model (and
the parser registry it validates `format:` against); the adapter is imported when a tester is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.adapters.spec import AdapterSpec

if TYPE_CHECKING:
    from emsedge.adapters.base import AdapterContext, PushAdapter


def _build(config: ResultFilesEquipment, ctx: AdapterContext) -> PushAdapter:
    from emsedge.adapters.result_files.adapter import ResultFilesAdapter  # noqa: PLC0415 - the adapter's stack

    return ResultFilesAdapter(config, ctx)


spec = AdapterSpec(
    name="result_files",
    config_model=ResultFilesEquipment,
    build=_build,
    summary="Tester result files (i3070, GR228x, SPEA, Takaya, CSV) from a folder or share: unit_tested events.",
)

__all__ = ["ResultFilesEquipment", "spec"]
