"""A real Modbus TCP equipment in its own process, for daemon-level tests: `python equipment_process.py PORT`
(several ports: one machine on each, served by the one process; the plant tests use it for ten lines).

Holding registers: 0-1 float32 zone temperature 215.5, 2 uint16 conveyor speed 725 (x0.1 cm/min),
4-5 uint32 little-word board counter 123456. Every poll of the gateway yields one telemetry message.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration.modbus_server import ModbusTestServer, RegisterImage


async def main(*ports: int) -> None:
    image = RegisterImage()
    image.put(0, "float32", 215.5)
    image.put(2, "uint16", 725)
    image.put(4, "uint32", 123456, word_order="little")
    async with contextlib.AsyncExitStack() as stack:
        for port in ports:
            await stack.enter_async_context(ModbusTestServer(holding=image.registers(16), port=port))
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*(int(port) for port in sys.argv[1:])))
