"""SECS/GEM over HSMS: `secs2` (SECS-II codec), `connection` (HSMS framing and timers), `gem` (host
layer and the push adapter). The passive GEM equipment used by simulators and tests lives in
`emsedge.simulate.gem_equipment`."""

from __future__ import annotations

from emsedge.adapters.base import AdapterContext, PushAdapter
from emsedge.adapters.hsms.gem import HsmsAdapter


def build(ctx: AdapterContext) -> PushAdapter:
    """Adapter factory registered as `hsms` in `emsedge.adapters.BUILTIN`."""
    return HsmsAdapter(ctx)


__all__ = ["HsmsAdapter", "build"]
