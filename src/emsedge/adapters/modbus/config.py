"""Config model of the Modbus TCP adapter: the server, the signals (table, address, type, scaling)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from emsedge.config import ConfigModel, Duration, EquipmentBase, Host, SignalCommon

ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
REGISTER_WIDTH: dict[str, int] = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4,
    "float64": 4,
}


class ModbusConnection(ConfigModel):
    host: Host = Field(description="Host name or IP of the Modbus TCP server.")
    port: int = Field(502, ge=1, le=65535, description="TCP port.")
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave/device) id.")
    timeout: Duration = Field(1.0, description="Deadline for one request.")


class ModbusSignal(SignalCommon):
    table: Literal["holding", "input", "coil", "discrete"] = Field(description="Modbus table.")
    address: int = Field(ge=0, le=65535, description="0-based protocol offset within the table.")
    type: ModbusType = Field("uint16", description="Data type of the value.")
    word_order: Literal["big", "little"] = Field("big", description="Order of 16-bit words (multi-register).")
    byte_order: Literal["big", "little"] = Field("big", description="Order of bytes inside each word.")
    scale: float = Field(1.0, description="value = raw * scale + offset.")
    offset: float = Field(0.0, description="value = raw * scale + offset.")
    bit: int | None = Field(None, ge=0, le=15, description="For type bool on a register: the bit number.")
    length: int | None = Field(None, ge=1, le=125, description="For type string: length in registers.")

    @model_validator(mode="after")
    def _check_type(self) -> ModbusSignal:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise ValueError(f"a {self.table} holds single bits: use type: bool")
        if self.type == "bool" and not bit_table and self.bit is None:
            raise ValueError("type bool on a register needs `bit: n` (0-15)")
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise ValueError("`bit` only applies to type bool on a holding or input register")
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs `length` (in registers, 2 characters each)")
        if self.length is not None and self.type != "string":
            raise ValueError("`length` only applies to type string")
        if self.address + self.register_count > 65536:
            raise ValueError("the value runs past the end of the table (address + width > 65536)")
        return self

    @property
    def register_count(self) -> int:
        if self.type == "string":
            return self.length or 1
        return REGISTER_WIDTH[self.type]


class ModbusEquipment(EquipmentBase):
    adapter: Literal["modbus"] = Field(description="Modbus TCP client.")
    connection: ModbusConnection = Field(description="The Modbus TCP server.")
    poll_interval: Duration = Field(1.0, description="Poll period; kept without drift.")
    max_gap: int = Field(8, ge=0, le=100, description="Unused registers merged into one read to save requests.")
    max_registers_per_read: int = Field(125, ge=1, le=125, description="Register count cap per request.")
    max_bits_per_read: int = Field(2000, ge=1, le=2000, description="Coil/discrete count cap per request.")
    signals: list[ModbusSignal] = Field(min_length=1, description="Signals read each poll.")
