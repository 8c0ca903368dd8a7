"""A Modbus TCP server written to misbehave: it answers whatever PDU a behaviour returns.

pymodbus' own server only sends well-formed answers, so the malformed ones a broken controller sends
(a coil answer shorter than asked, an FC4 answer to an FC3 request, a byte count that lies) come from
here: `HostileModbus(behaviour)` parses each request's MBAP header and PDU and sends back
`behaviour(function_code, address, count)` framed with the request's transaction and unit ids (None:
no answer). Registers hold `address + offset` (mod 65536); coils alternate on, off.

Run standalone for daemon tests: `python hostile_modbus.py PORT MODE` (MODE from `MODES`, or `chaos`).
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Callable

Behaviour = Callable[[int, int, int], bytes | None]


def registers(address: int, count: int) -> bytes:
    return struct.pack(f">{count}H", *((address + i) % 65536 for i in range(count)))


def bits(address: int, count: int) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in range(count):
        if (address + i) % 2 == 0:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def good(fc: int, address: int, count: int) -> bytes:
    data = bits(address, count) if fc in (1, 2) else registers(address, count)
    return bytes([fc, len(data)]) + data


def short_bits(fc: int, address: int, count: int) -> bytes:
    """Coil/discrete answers one byte short (byte count consistent with it); registers are fine."""
    if fc in (1, 2):
        data = bits(address, count)[:-1]
        return bytes([fc, len(data)]) + data
    return good(fc, address, count)


def wrong_function(fc: int, address: int, count: int) -> bytes:
    """An FC4 answer to an FC3 request (of the right size); other reads are fine."""
    return good(4 if fc == 3 else fc, address, count)


def lying_byte_count(fc: int, address: int, count: int) -> bytes:
    """Register answers whose byte count claims more than the frame holds."""
    if fc in (3, 4):
        data = registers(address, count)
        return bytes([fc, min(255, len(data) + 40)]) + data
    return good(fc, address, count)


def unknown_function(fc: int, address: int, count: int) -> bytes:
    """Register reads answered with a function code no Modbus client knows (0x41)."""
    return bytes([0x41, 2, 0, 1]) if fc in (3, 4) else good(fc, address, count)


def empty_pdu(fc: int, address: int, count: int) -> bytes:
    """Register reads answered with the function code alone, no byte count, no data."""
    return bytes([fc]) if fc in (3, 4) else good(fc, address, count)


def chaos() -> Behaviour:
    """Each request answered by the next behaviour in turn: well-formed, then every malformed kind."""
    turns = [good, short_bits, wrong_function, lying_byte_count, unknown_function, empty_pdu, good]  # 7: coprime
    # with the blocks of a poll, so every block meets every behaviour
    count = [0]

    def answer(fc: int, address: int, count_: int) -> bytes | None:
        count[0] += 1
        return turns[count[0] % len(turns)](fc, address, count_)

    return answer


MODES: dict[str, Behaviour] = {
    "good": good, "short_bits": short_bits, "wrong_function": wrong_function,
    "lying_byte_count": lying_byte_count, "unknown_function": unknown_function, "empty_pdu": empty_pdu,
}  # fmt: skip


class HostileModbus:
    """`async with HostileModbus(behaviour, port=...) as server:` serves on 127.0.0.1:`server.port`."""

    def __init__(self, behaviour: Behaviour, port: int = 0) -> None:
        self.behaviour = behaviour
        self.port = port
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HostileModbus:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                fc = pdu[0]
                address, count = struct.unpack(">HH", pdu[1:5]) if len(pdu) >= 5 else (0, 0)
                self.requests += 1
                answer = self.behaviour(fc, address, count)
                if answer is None:
                    continue
                writer.write(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def _main(port: int, mode: str) -> None:
    async with HostileModbus(chaos() if mode == "chaos" else MODES[mode], port=port):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), sys.argv[2]))
