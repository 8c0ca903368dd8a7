"""The virtual reflow oven: a pymodbus TCP server showing the line model's oven in holding registers.

Register map (holding registers, 0-based protocol addresses, big-endian words and bytes):

    zone z = 1..10, base = 8 * (z - 1):
      base+0  top_setpoint     float32  Cel
      base+2  top_actual       float32  Cel   follows the setpoint with a first-order lag, plus noise
      base+4  bottom_setpoint  float32  Cel
      base+6  bottom_actual    float32  Cel
    100  conveyor_speed   uint16  x0.1 cm/min
    101  o2_ppm           uint16  ppm
    102  boards_in_oven   uint16
    103  alarm_word       uint16  bit 0 over temperature, 1 deviation, 2 conveyor stopped, 3 O2 high,
                                  4 exhaust flow low, 5 board jam, 6 fan failure, 7 emergency stop
    104  board_exit_count uint32  boards that left the oven since start
    106  oven_state       uint16  0 off, 1 heating, 2 running, 3 standby (no boards), 4 alarm stop
    110  board_exit_serial string, 8 registers (16 ASCII characters, NUL padded)
    120  recipe           string, 8 registers

The registers are read-only (writes answer IllegalAddress): the gateway never writes to equipment.
Every read copies the current image in, so a poll sees one consistent snapshot of one line step.
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from emsedge.simulate.line import Line

REGISTERS = 128
ZONE_BASE = 0
CONVEYOR_SPEED = 100
O2_PPM = 101
BOARDS_IN_OVEN = 102
ALARM_WORD = 103
BOARD_EXIT_COUNT = 104
OVEN_STATE = 106
BOARD_EXIT_SERIAL = 110
RECIPE = 120
STRING_REGISTERS = 8


def float32_words(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def string_words(text: str, registers: int) -> list[int]:
    raw = text.encode("ascii", "replace")[: registers * 2].ljust(registers * 2, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


class ReflowOvenServer:
    def __init__(self, line: Line) -> None:
        self.line = line
        self.cfg = line.config.reflow_oven
        self.image = [0] * REGISTERS
        self.server: ModbusTcpServer | None = None
        self.reads = 0
        self.refresh()

    @property
    def running(self) -> bool:
        return self.server is not None

    def refresh(self) -> None:
        """Rebuild the register image from the line model (called once per line step)."""
        oven = self.line.oven
        top, bottom = oven.measured()
        image = [0] * REGISTERS
        for z in range(10):
            base = ZONE_BASE + 8 * z
            image[base : base + 2] = float32_words(oven.top_setpoints[z])
            image[base + 2 : base + 4] = float32_words(top[z])
            image[base + 4 : base + 6] = float32_words(oven.bottom_setpoints[z])
            image[base + 6 : base + 8] = float32_words(bottom[z])
        image[CONVEYOR_SPEED] = round(oven.conveyor_speed * 10) & 0xFFFF
        image[O2_PPM] = min(0xFFFF, round(oven.o2_ppm))
        image[BOARDS_IN_OVEN] = len(oven.boards)
        image[ALARM_WORD] = oven.alarm_word & 0xFFFF
        count = oven.exit_count & 0xFFFFFFFF
        image[BOARD_EXIT_COUNT : BOARD_EXIT_COUNT + 2] = [count >> 16, count & 0xFFFF]
        image[OVEN_STATE] = oven.state
        serial = string_words(oven.exit_serial, STRING_REGISTERS)
        image[BOARD_EXIT_SERIAL : BOARD_EXIT_SERIAL + STRING_REGISTERS] = serial
        image[RECIPE : RECIPE + STRING_REGISTERS] = string_words(self.cfg.recipe, STRING_REGISTERS)
        self.image = image

    async def _on_access(  # noqa: PLR0917 - pymodbus SimAction calls it positionally
        self, function_code: int, start_address: int, address: int, count: int, registers: list[int],
        set_values: Any,
    ) -> None:
        self.reads += 1
        if function_code in (3, 4):
            registers[: len(self.image)] = self.image

    async def start(self) -> None:
        def regs(values: list[int], readonly: bool = True) -> list[SimData]:
            return [SimData(0, values=values, datatype=DataType.REGISTERS, readonly=readonly)]

        def bits() -> list[SimData]:
            return [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]

        device = SimDevice(
            id=0, simdata=(bits(), bits(), regs(list(self.image)), regs([0] * 16)), action=self._on_access
        )
        server = ModbusTcpServer(device, address=(self.cfg.host, self.cfg.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus reports a port in use this way
            raise OSError(f"the reflow oven cannot listen on {self.cfg.host}:{self.cfg.port}: {exc}") from None
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.shutdown()  # type: ignore[no-untyped-call]
