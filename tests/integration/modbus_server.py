"""A real pymodbus TCP server with known contents, on a free port, for tests and benchmarks.

Contents are given as Python values and encoded here with `struct`, independently of the adapter's
decoder, so the tests compare two separate implementations of the byte/word orders:

    regs = RegisterImage()
    regs.put(0, "float32", 21.5, word_order="little", byte_order="big")
    async with ModbusTestServer(holding=regs.registers(100)) as server: ...

Uses the pymodbus 3.16 `SimDevice`/`SimData` datastore (the older context classes are deprecated).
Each table is its own block; addresses outside a block answer IllegalDataAddress.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "float32": "f", "float64": "d",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def encode(type_: str, value: Any, *, word_order: str = "big", byte_order: str = "big",
           length: int | None = None) -> list[int]:
    """Registers holding `value` as a device with these orders would send them."""
    if type_ == "string":
        raw = str(value).encode().ljust((length or 1) * 2, b"\x00")
        words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    else:
        raw = struct.pack(">" + FORMATS[type_], value)
        words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
        if word_order == "little":
            words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@dataclass
class RegisterImage:
    """A sparse register table built from typed values."""

    cells: dict[int, int] = field(default_factory=dict)

    def put(self, address: int, type_: str, value: Any, **orders: Any) -> None:
        for n, word in enumerate(encode(type_, value, **orders)):
            self.cells[address + n] = word

    def registers(self, size: int) -> list[int]:
        return [self.cells.get(a, 0) for a in range(size)]


class ModbusTestServer:
    """pymodbus TCP server in the current event loop; `async with` starts and stops it."""

    def __init__(
        self,
        *,
        holding: list[int] | None = None,
        input: list[int] | None = None,
        coils: list[bool] | None = None,
        discrete: list[bool] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.requests = 0

        def regs(values: list[int] | None) -> list[SimData]:
            return [SimData(0, values=values or [0], datatype=DataType.REGISTERS)]

        def bits(values: list[bool] | None) -> list[SimData]:
            padded = list(values or [False])
            padded += [False] * (-len(padded) % 16)
            return [SimData(0, values=padded, datatype=DataType.BITS)]

        self.device = SimDevice(id=0, simdata=(bits(coils), bits(discrete), regs(holding), regs(input)))
        self.server: ModbusTcpServer | None = None

    def _count(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests += 1
        return pdu

    async def start(self) -> None:
        self.server = ModbusTcpServer(self.device, address=("127.0.0.1", self.port), trace_pdu=self._count)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
