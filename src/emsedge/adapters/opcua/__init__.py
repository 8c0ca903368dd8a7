"""OPC UA adapter (asyncua client): subscriptions or Read polling, exact security, browse and cert tools.

`spec` is what the `opcua` entry point registers. This module imports only the config model; the adapter
(and asyncua) is imported when an OPC UA machine is built. `emsedge browse` and `emsedge opcua-cert` live
in `emsedge.adapters.opcua.tools`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emsedge.adapters.opcua.config import OpcUaEquipment
from emsedge.adapters.spec import AdapterSpec

if TYPE_CHECKING:
    from emsedge.adapters.base import Adapter, AdapterContext


def _build(config: OpcUaEquipment, ctx: AdapterContext) -> Adapter:
    """The adapter shape follows `mode`: a push adapter for subscriptions, a polled one for Read cycles."""
    from emsedge.adapters.opcua.adapter import OpcUaPoller, OpcUaSubscriber  # noqa: PLC0415 - imports asyncua

    return OpcUaSubscriber(ctx) if config.mode == "subscribe" else OpcUaPoller(ctx)


spec = AdapterSpec(
    name="opcua",
    config_model=OpcUaEquipment,
    build=_build,
    summary="OPC UA client: monitored items (subscribe) or Read polling, Alarms & Conditions.",
)

__all__ = ["OpcUaEquipment", "spec"]
