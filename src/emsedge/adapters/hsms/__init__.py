"""SECS/GEM over HSMS: `secs2` (SECS-II codec), `connection` (HSMS framing and timers), `gem` (host
layer and the push adapter). The passive GEM equipment used by simulators and tests lives in
`emsedge.simulate.gem_equipment`.

`spec` is what the `hsms` entry point registers; the host layer is imported when an HSMS machine is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emsedge.adapters.hsms.config import HsmsEquipment
from emsedge.adapters.spec import AdapterSpec

if TYPE_CHECKING:
    from emsedge.adapters.base import AdapterContext, PushAdapter


def _build(config: HsmsEquipment, ctx: AdapterContext) -> PushAdapter:
    from emsedge.adapters.hsms.gem import HsmsAdapter  # noqa: PLC0415

    return HsmsAdapter(ctx)


spec = AdapterSpec(
    name="hsms",
    config_model=HsmsEquipment,
    build=_build,
    summary="SECS/GEM host over HSMS: event reports, alarms, status variable polling.",
)

__all__ = ["HsmsEquipment", "spec"]
