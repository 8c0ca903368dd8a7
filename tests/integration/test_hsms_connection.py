"""HSMS connection rules on real sockets: selection, rejects, T7, T8, session ids, passive host mode."""

from __future__ import annotations

import struct

import anyio
import pytest
from hsms_support import Collector, aoi_config, aoi_simulator, context
from support import free_port

from emsedge.adapters.hsms.config import HsmsConnection
from emsedge.adapters.hsms.connection import HEADER, HsmsLink, Message, SType, frame
from emsedge.adapters.hsms.gem import HsmsAdapter
from emsedge.adapters.hsms.secs2 import L
from emsedge.simulate.gem_equipment import GemEquipment
from emsedge.supervisor import supervise_adapter


async def read_frame(stream: anyio.abc.ByteStream) -> tuple[int, int, int, int, int, bytes]:
    """(session, byte2, byte3, stype, system, body) of the next frame."""
    buf = b""
    with anyio.fail_after(10):
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            buf += await stream.receive()
    _, session, byte2, byte3, _, stype, system = HEADER.unpack_from(buf)
    return session, byte2, byte3, stype, system, buf[14:]


async def closed_by_peer(stream: anyio.abc.ByteStream) -> None:
    """Read until the peer closes; fail after 10 s."""
    with anyio.fail_after(10):
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return


async def close_reason(eq: GemEquipment) -> str:
    with anyio.fail_after(10):
        while eq.last_close_reason is None:  # noqa: ASYNC110 - set by the simulator's own task
            await anyio.sleep(0.01)
    return eq.last_close_reason


async def served(eq: GemEquipment, tg: anyio.abc.TaskGroup) -> anyio.abc.SocketStream:
    port = await tg.start(eq.serve)
    return await anyio.connect_tcp("127.0.0.1", port)


@pytest.mark.asyncio
async def test_data_before_select_is_rejected_with_entity_not_selected() -> None:
    eq = aoi_simulator()
    async with anyio.create_task_group() as tg:
        async with await served(eq, tg) as stream:
            await stream.send(frame(0, 0x81, 1, SType.DATA, 77))
            _, byte2, byte3, stype, system, _ = await read_frame(stream)
            assert (stype, byte2, byte3, system) == (SType.REJECT_REQ, SType.DATA, 4, 77)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_select_linktest_and_a_second_select_follow_e37() -> None:
    eq = aoi_simulator()
    async with anyio.create_task_group() as tg:
        async with await served(eq, tg) as stream:
            await stream.send(frame(0xFFFF, 0, 0, SType.SELECT_REQ, 1))
            assert (await read_frame(stream))[2:5] == (0, SType.SELECT_RSP, 1)
            await stream.send(frame(0xFFFF, 0, 0, SType.LINKTEST_REQ, 2))
            assert (await read_frame(stream))[3:5] == (SType.LINKTEST_RSP, 2)
            await stream.send(frame(0xFFFF, 0, 0, SType.SELECT_REQ, 3))
            assert (await read_frame(stream))[2:5] == (1, SType.SELECT_RSP, 3)  # already active
            await stream.send(frame(0xFFFF, 0, 0, 8, 4))  # SType 8 is not defined
            assert (await read_frame(stream))[2:5] == (1, SType.REJECT_REQ, 4)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_data_message_for_another_session_id_is_answered_s9f1() -> None:
    eq = aoi_simulator()
    async with anyio.create_task_group() as tg:
        async with await served(eq, tg) as stream:
            await stream.send(frame(0xFFFF, 0, 0, SType.SELECT_REQ, 1))
            await read_frame(stream)
            await stream.send(frame(5, 0x81, 1, SType.DATA, 9))
            _, byte2, byte3, stype, _, body = await read_frame(stream)
            assert (stype, byte2 & 0x7F, byte3) == (SType.DATA, 9, 1)
            assert body[2:] == frame(5, 0x81, 1, SType.DATA, 9)[4:]  # MHEAD: the offending header
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_a_connection_never_selected_is_closed_after_t7() -> None:
    eq = aoi_simulator(t7=0.3)
    async with anyio.create_task_group() as tg:
        async with await served(eq, tg) as stream:
            await closed_by_peer(stream)
        assert await close_reason(eq) == "T7 timeout: not selected"
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_a_frame_that_stops_halfway_is_dropped_after_t8() -> None:
    eq = aoi_simulator(t8=0.3)
    async with anyio.create_task_group() as tg:
        async with await served(eq, tg) as stream:
            await stream.send(frame(0xFFFF, 0, 0, SType.SELECT_REQ, 1))
            await read_frame(stream)
            await stream.send(struct.pack(">I", 40) + b"\x00\x00")
            await closed_by_peer(stream)
        assert await close_reason(eq) == "T8 inter-character timeout"
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_frame_shorter_than_a_header_ends_the_connection() -> None:
    eq = aoi_simulator()
    async with anyio.create_task_group() as tg:
        async with await served(eq, tg) as stream:
            await stream.send(struct.pack(">I", 3) + b"abc")
            await closed_by_peer(stream)
        assert "broken frame" in await close_reason(eq)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_passive_host_mode_accepts_an_active_equipment_and_serves_it() -> None:
    port = free_port()
    config = aoi_config(port, mode="passive")
    collector = Collector()
    ctx = context(config, collector)
    replies: list[Message] = []

    async def equipment_handler(link: HsmsLink, msg: Message) -> None:
        replies.append(msg)
        if msg.wbit:
            await link.reply(msg, msg.stream, msg.function + 1, L())

    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, HsmsAdapter(ctx), ctx)
        with anyio.fail_after(10):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    break
                except OSError:
                    await anyio.sleep(0.02)
        settings = HsmsConnection(port=port, mode="active", t3=2, t6=1, linktest_interval=0)
        link = HsmsLink(stream, settings, ctx.log, equipment_handler, passive=False)
        async with anyio.create_task_group() as link_group:
            await link_group.start(link.run)
            await link.select()
            with anyio.fail_after(10):
                while not any(m.name == "S1F13" for m in replies):  # noqa: ASYNC110 - plain list
                    await anyio.sleep(0.01)
            link_group.cancel_scope.cancel()
        await collector.wait_for(lambda c: bool(c.events("connection_lost")))
        tg.cancel_scope.cancel()
    assert replies[0].name == "S1F13"

