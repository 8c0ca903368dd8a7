"""Modbus TCP adapter (pymodbus client): planned block reads, decoded per signal; `emsedge probe`."""

from __future__ import annotations

from emsedge.adapters.modbus.adapter import (
    ModbusAdapter,
    ModbusDecoder,
    build,
    main_probe,
    plan_requests,
    signal_width,
)

__all__ = ["ModbusAdapter", "ModbusDecoder", "build", "main_probe", "plan_requests", "signal_width"]
