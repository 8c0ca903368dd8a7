"""A GEM equipment written to misbehave: `python hostile_hsms.py PORT` listens (passive) on PORT.

Once the host has established communication and enabled its reports, it plays a broken controller in
rounds, each round ending with one well-formed S6F11 (CEID 500, the round number as board serial):

* a spooling tool: the same S6F11 with its CEID sent as a list, re-sent `RESENDS` times;
* an S6F11 whose RPTID is a list, an S5F1 whose ALID is a list, an S10F1 without text;
* an S6F11 nested 2,000 deep and an S9F7 whose body is nested 2,000 deep;
* an unknown stream (S99F1 W);
* once per connection: a 16 MB S6F11 made of 8,000,000 empty lists, in lists of 255 so that no single
  header declares too many (the budget has to count them).

It prints one line per round: `round N good_acked=K rejected=R` (stdout, line-buffered).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from emsedge.adapters.hsms.connection import HsmsClosed, Message, TransactionRejected, frame
from emsedge.adapters.hsms.secs2 import U4, A, B, L, encode
from emsedge.simulate.gem_equipment import GemEquipment, SimStatusVariable

CEID = 500
RPTID = 100
RESENDS = 3
ROUND_PAUSE = 0.2


def nested(depth: int) -> bytes:
    return bytes([0x01, 0x01]) * depth + bytes([0x01, 0x00])


def monster_report(total_lists: int = 8_000_000) -> bytes:
    """S6F11 body: L[3]{U4 DATAID, U4 CEID, L[1]{L[2]{U4 RPTID, L[n]{L[255]{L[0] x 255} ...}}}}."""
    chunks = total_lists // 255
    head = encode(L(U4(1), U4(CEID), L(L(U4(RPTID), L()))))[:-2]  # drop the empty value list
    values = bytes([0x03]) + chunks.to_bytes(3, "big") + (bytes([0x01, 0xFF]) + bytes([0x01, 0x00]) * 255) * chunks
    return head + values


def equipment(port: int) -> GemEquipment:
    return GemEquipment(
        port=port, name="hostile-gem",
        status_variables={1: SimStatusVariable("State", 2)},
        data_values={10: "PCB-00000"},
        collection_events={CEID: "BoardDone"},
    )


async def play(eq: GemEquipment) -> None:
    good = rejected = 0
    round_no = 0
    while True:
        await eq.wait_ready()
        link = eq.link
        if link is None:
            await anyio.sleep(0.05)
            continue
        try:
            monster = monster_report()
            await link.send_raw(frame(0, 0x80 | 6, 11, 0, 0x7000_0000, body=monster))
            del monster
            while eq.link is link:
                round_no += 1
                odd = [Message(6, 11, L(U4(round_no), L(U4(CEID)), L()))] * RESENDS + [
                    Message(6, 11, L(U4(round_no), U4(CEID), L(L(L(U4(RPTID)), L(A("x")))))),
                    Message(5, 1, L(B(0x80), L(U4(7)), A("jam"))),
                    Message(10, 1, L()),
                    Message(99, 1),
                ]
                for message in odd:
                    try:
                        await link.request(message)
                    except TransactionRejected:
                        rejected += 1
                await link.send_raw(frame(0, 0x80 | 6, 11, 0, 0x7100_0000 + round_no, body=nested(2000)))
                await link.send_raw(frame(0, 9, 7, 0, 0x7200_0000 + round_no, body=nested(2000)))
                eq.data_values[10] = f"PCB-{round_no:05d}"
                if await eq.send_event(CEID) == 0:
                    good += 1
                print(f"round {round_no} good_acked={good} rejected={rejected}", flush=True)
                await anyio.sleep(ROUND_PAUSE)
        except (HsmsClosed, TransactionRejected):
            await anyio.sleep(0.05)


async def main(port: int) -> None:
    eq = equipment(port)
    async with anyio.create_task_group() as tg:
        await tg.start(eq.serve)
        print("ready", flush=True)
        tg.start_soon(play, eq)


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]))
