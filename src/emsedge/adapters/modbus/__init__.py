"""Modbus TCP adapter (pymodbus client): planned block reads, decoded per signal; `emsedge probe`.

`spec` is what the `modbus` entry point registers. This module imports only the config model; the
adapter (and pymodbus) is imported when a Modbus machine is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.adapters.spec import AdapterSpec

if TYPE_CHECKING:
    from emsedge.adapters.base import AdapterContext, PolledAdapter


def _build(config: ModbusEquipment, ctx: AdapterContext) -> PolledAdapter:
    from emsedge.adapters.modbus.adapter import ModbusAdapter  # noqa: PLC0415 - imports pymodbus

    return ModbusAdapter(ctx)


spec = AdapterSpec(
    name="modbus",
    config_model=ModbusEquipment,
    build=_build,
    summary="Modbus TCP client: holding/input registers, coils and discrete inputs, polled.",
)

__all__ = ["ModbusEquipment", "spec"]
