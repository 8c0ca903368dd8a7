"""The HSMS host adapter against the project's own passive GEM equipment on a free port.

These cover what secsgem cannot play: silent peers, Separate, broken frames, undecodable bodies,
reconnects. The conformance run against secsgem is in test_hsms_secsgem.py.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from hsms_support import (
    ALID_CONVEYOR,
    CEID_BOARD_INSPECTED,
    SV_INSPECTED,
    Collector,
    aoi_config,
    aoi_simulator,
    context,
)
from trio.testing import MockClock

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.hsms.config import HsmsEquipment
from emsedge.adapters.hsms.connection import HsmsClosed, Message, TransactionRejected, frame
from emsedge.adapters.hsms.gem import HsmsAdapter
from emsedge.adapters.hsms.secs2 import U4, A, B, L
from emsedge.schema import EventMessage, Record, TelemetryMessage, encode
from emsedge.simulate.gem_equipment import GemEquipment
from emsedge.supervisor import supervise_adapter


def restored(c: Collector, n: int = 1) -> bool:
    return len(c.events("connection_restored")) >= n


@asynccontextmanager
async def running(
    eq: GemEquipment, collector: Collector, **connection: Any
) -> AsyncIterator[tuple[HsmsEquipment, AdapterContext]]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(eq.serve)
        config = aoi_config(port, **connection)
        ctx = context(config, collector)
        await tg.start(supervise_adapter, HsmsAdapter(ctx), ctx)
        await collector.wait_for(restored)
        yield config, ctx
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_host_defines_links_and_enables_reports_and_alarms_after_establishing() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        assert eq.communicating
        assert eq.reports == {100: [2001, 2002, 2003]}
        assert eq.links == {CEID_BOARD_INSPECTED: [100]}
        assert eq.enabled_events == {CEID_BOARD_INSPECTED}
        assert eq.alarms[ALID_CONVEYOR].enabled


@pytest.mark.asyncio
async def test_status_variables_are_polled_into_one_telemetry_record_per_poll() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector) as _:
        await collector.wait_for(lambda c: len(c.telemetry()) >= 2)
        record = collector.telemetry()[0]
        readings = {r["signal"]: r for r in record.body["readings"]}
        assert readings["process_state"]["value"] == 2
        assert readings["inspected_boards"]["value"] == 17
        assert readings["inspected_boards"]["unit"] == "boards"  # from the S1F12 namelist
        assert all(r["quality"] == "good" for r in readings.values())
        TelemetryMessage.model_validate_json(encode(record, gateway="gw", seq=1, message_id="m"))


@pytest.mark.asyncio
async def test_a_status_variable_answered_with_an_empty_item_is_bad_with_no_value() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        del eq.status_variables[SV_INSPECTED]
        await collector.wait_for(
            lambda c: any(r["signal"] == "inspected_boards" and r["quality"] == "bad"
                          for t in c.telemetry() for r in t.body["readings"]))
        bad = [r for t in collector.telemetry() for r in t.body["readings"]
               if r["signal"] == "inspected_boards" and r["quality"] == "bad"]
        assert bad[0]["value"] is None


@pytest.mark.asyncio
async def test_event_report_becomes_unit_inspected_with_serial_result_and_defects() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        eq.board.update(serial="PCB-42", result="FAIL", defects=3)  # type: ignore[attr-defined]
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0
        eq.board.update(serial="PCB-43", result="PASS", defects=0)  # type: ignore[attr-defined]
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0
        failed, passed = collector.events("unit_inspected")
        assert failed["serial"] == "PCB-42"
        assert failed["result"] == "fail"
        assert failed["raw_result"] == "FAIL"
        assert failed["defect_count"] == 3
        assert failed["defects"] is None  # no report value carries the list
        assert failed["ceid"] == CEID_BOARD_INSPECTED
        assert failed["name"] == "board_inspected"
        assert failed["values"] == {"board_serial": "PCB-42", "result": "FAIL", "defect_count": 3}
        assert passed["result"] == "pass"
        record = next(r for r in collector.records if r.event_type == "unit_inspected")
        EventMessage.model_validate_json(encode(record, gateway="gw", seq=1, message_id="m"))


@pytest.mark.asyncio
async def test_event_report_is_acknowledged_only_after_emit_returned() -> None:
    eq, collector = aoi_simulator(), Collector()
    release, entered = anyio.Event(), anyio.Event()
    inner = collector.emit

    async def slow_emit(records: Sequence[Record]) -> None:
        if any(r.event_type == "unit_inspected" for r in records):
            entered.set()
            await release.wait()
        await inner(records)

    collector.emit = slow_emit  # type: ignore[method-assign]
    async with running(eq, collector):
        acks: list[int | None] = []

        async def send() -> None:
            acks.append(await eq.send_event(CEID_BOARD_INSPECTED))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with anyio.fail_after(10):
                await entered.wait()
            assert eq.link is not None
            await eq.link.linktest()  # an S6F12 the host wrote before it answered this would have arrived by now
            assert acks == []
            assert not any(m.name == "S6F12" for m in eq.received)
            release.set()
        assert acks == [0]
        assert len(collector.events("unit_inspected")) == 1


def test_a_report_whose_emit_is_held_past_every_deadline_is_never_acknowledged_and_is_resent() -> None:
    """Durable acknowledgement only: no S6F12 while the buffer holds the emit (a full disk), however long;
    when the emit fails the link closes without a reply, and the equipment's re-send is acknowledged.

    Real HSMS over TCP on trio's MockClock: once every task waits, the clock jumps, so a ten-minute hold
    (past T3, T5-T8, and any internal deadline a host might put around the emit) takes a moment.
    """
    eq, collector = aoi_simulator(t3=3600.0), Collector()  # the equipment waits an hour for its S6F12
    release, holding = anyio.Event(), anyio.Event()
    failing = [True]
    inner = collector.emit
    answers: list[object] = []

    async def held_emit(records: Sequence[Record]) -> None:
        if any(r.event_type == "unit_inspected" for r in records):
            holding.set()
            await release.wait()
            if failing[0]:
                failing[0] = False
                raise OSError(28, "No space left on device")
        await inner(records)

    collector.emit = held_emit  # type: ignore[method-assign]

    async def send() -> None:
        try:
            answers.append(await eq.send_event(CEID_BOARD_INSPECTED))
        except HsmsClosed as exc:
            answers.append(exc)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(eq.serve)
            config = aoi_config(port).model_copy(update={"status_variables": []})  # no poll timers
            ctx = context(config, collector)
            await tg.start(supervise_adapter, HsmsAdapter(ctx), ctx)
            await collector.wait_for(restored)
            await eq.wait_ready()
            async with anyio.create_task_group() as sender:
                sender.start_soon(send)
                with anyio.fail_after(5):
                    await holding.wait()
                held_from = anyio.current_time()
                await anyio.sleep(600)  # ten (virtual) minutes of back-pressure
                assert answers == []  # no ACKC6 of any value while the record is not durable
                release.set()
            assert anyio.current_time() - held_from >= 600
            assert len(answers) == 1
            assert isinstance(answers[0], HsmsClosed)  # the link closed without a reply
            assert collector.events("unit_inspected") == []
            await collector.wait_for(lambda c: restored(c, 2))
            await eq.wait_ready()
            assert await eq.send_event(CEID_BOARD_INSPECTED) == 0  # the re-send is stored, then acknowledged
            assert len(collector.events("unit_inspected")) == 1
            tg.cancel_scope.cancel()

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0.5)})


@pytest.mark.asyncio
async def test_unknown_ceid_is_acknowledged_and_emitted_as_a_generic_collection_event() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        eq.links[4242] = [100]
        assert await eq.send_event(4242, force=True) == 0
        (generic,) = collector.events("collection_event")
        assert generic["ceid"] == 4242
        assert generic["values"]["board_serial"] == "PCB-0001"


@pytest.mark.asyncio
async def test_alarm_set_and_clear_become_fault_events_linked_by_occurrence_id() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        assert await eq.set_alarm(ALID_CONVEYOR) == 0
        assert await eq.clear_alarm(ALID_CONVEYOR) == 0
        (occurred,) = collector.events("fault_occurred")
        (cleared,) = collector.events("fault_cleared")
        assert occurred["alid"] == ALID_CONVEYOR
        assert occurred["altx"] == "conveyor jam"
        assert occurred["alcd"] == 0x85
        assert occurred["severity"] == "error"
        assert cleared["fault_occurrence_id"] == occurred["fault_occurrence_id"]


@pytest.mark.asyncio
async def test_unknown_primaries_are_answered_s9f5_or_s9f3() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        assert eq.link is not None
        with pytest.raises(TransactionRejected, match="S9F5"):
            await eq.link.request(Message(7, 19))
        with pytest.raises(TransactionRejected, match="S9F3"):
            await eq.link.request(Message(99, 1))
        reply = await eq.link.request(Message(1, 1))
        assert reply.name == "S1F2"


@pytest.mark.asyncio
async def test_t3_timeout_on_a_silent_peer_ends_the_connection_and_the_adapter_reconnects() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector, t3="300ms"):
        eq.mute.add((1, 3))
        await collector.wait_for(lambda c: bool(c.events("connection_lost")))
        (lost,) = collector.events("connection_lost")
        assert "T3" in lost["reason"]
        # the offline records: every status variable bad
        offline = collector.telemetry()[-1].body["readings"]
        assert {r["quality"] for r in offline} == {"bad"}
        eq.mute.clear()
        await collector.wait_for(lambda c: restored(c, 2))
        assert eq.connections == 2


@pytest.mark.asyncio
async def test_separate_from_the_equipment_ends_the_connection_and_the_adapter_reconnects() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        await eq.separate()
        await collector.wait_for(lambda c: restored(c, 2))
        assert collector.events("connection_lost")[0]["reason"] == "separate from peer"
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0


@pytest.mark.asyncio
async def test_a_peer_that_stops_answering_linktests_is_dropped() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector, linktest_interval="100ms", t6="300ms"):
        assert eq.link is not None
        eq.link.answer_linktest = False
        await collector.wait_for(lambda c: bool(c.events("connection_lost")))
        assert "T6" in collector.events("connection_lost")[0]["reason"]
        await collector.wait_for(lambda c: restored(c, 2))


@pytest.mark.asyncio
async def test_oversized_frame_header_is_refused_before_any_allocation() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector, max_message_bytes="1MiB"):
        tracemalloc.start()
        try:
            # declares a ~4 GB message and then sends nothing more
            await eq.send_raw(struct.pack(">I", 0xFFFFFFF0) + bytes(10))
            await collector.wait_for(lambda c: bool(c.events("connection_lost")))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "exceeds max_message_bytes" in collector.events("connection_lost")[0]["reason"]
        assert peak < 8 << 20
        await collector.wait_for(lambda c: restored(c, 2))


@pytest.mark.asyncio
async def test_undecodable_body_is_answered_s9f7_and_the_connection_keeps_working() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        # S6F11 W with a list header that promises 200 items in 2 bytes
        await eq.send_raw(frame(0, 0x80 | 6, 11, 0, 0xABCDEF, body=b"\x01\xc8\x01\xff"))
        with anyio.fail_after(10):
            while not any(m.name == "S9F7" for m in eq.received):  # noqa: ASYNC110 - a plain list
                await anyio.sleep(0.01)
        s9f7 = next(m for m in eq.received if m.name == "S9F7")
        assert s9f7.body is not None
        assert int.from_bytes(s9f7.body.value[6:10], "big") == 0xABCDEF
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0
        assert collector.events("connection_lost") == []
        assert len(collector.events("unit_inspected")) == 1


@pytest.mark.asyncio
async def test_structurally_wrong_event_report_is_answered_s9f7() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        assert eq.link is not None
        with pytest.raises(TransactionRejected, match="S9F7"):
            await eq.link.request(Message(6, 11, L(U4(1))))
        assert collector.events("connection_lost") == []


@pytest.mark.asyncio
async def test_connect_refused_is_reported_once_and_retried_until_the_equipment_appears() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with anyio.create_task_group() as tg:
        port = await tg.start(eq.serve)
        tg.cancel_scope.cancel()
    # nothing listens on `port` now
    config = aoi_config(port)
    ctx = context(config, collector)
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, HsmsAdapter(ctx), ctx)
        await collector.wait_for(lambda c: bool(c.events("connection_lost")))
        # A refused connect leaves nothing to observe: watch a few retries for a second connection_lost.
        await anyio.sleep(0.5)
        assert len(collector.events("connection_lost")) == 1
        assert ctx.health.connected is False
        eq2 = aoi_simulator(port=port)
        await tg.start(eq2.serve)
        await collector.wait_for(restored)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_deselect_from_the_equipment_ends_in_t7_and_a_fresh_connection() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector, t7="300ms"):
        assert eq.link is not None
        await eq.link.deselect()
        await collector.wait_for(lambda c: restored(c, 2))
        assert collector.events("connection_lost")[0]["reason"] == "T7 timeout: not selected"
        assert eq.connections == 2


@pytest.mark.asyncio
async def test_stopping_the_adapter_sends_separate_to_the_equipment() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with anyio.create_task_group() as tg:
        port = await tg.start(eq.serve)
        ctx = context(aoi_config(port), collector)
        async with anyio.create_task_group() as adapter_group:
            await adapter_group.start(supervise_adapter, HsmsAdapter(ctx), ctx)
            await collector.wait_for(restored)
            adapter_group.cancel_scope.cancel()
        with anyio.fail_after(10):
            await eq.wait_disconnected()
        assert eq.last_close_reason == "separate from peer"
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_s1f13_rejected_as_not_selected_right_after_select_is_retried_on_the_same_connection() -> None:
    eq, collector = aoi_simulator(reject_first=2), Collector()
    async with running(eq, collector):
        assert eq.connections == 1
        assert collector.events("connection_lost") == []


@pytest.mark.asyncio
async def test_terminal_message_from_the_equipment_is_acknowledged() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        assert eq.link is not None
        reply = await eq.link.request(Message(10, 1, L(B(0), A("operator: check nozzle 4"))))
        assert reply.name == "S10F2"
        assert reply.body == B(0)


def _nested(depth: int) -> bytes:
    return bytes([0x01, 0x01]) * depth + bytes([0x01, 0x00])


@pytest.mark.asyncio
async def test_oddly_shaped_messages_get_s9f7_and_the_report_queued_behind_them_is_delivered() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector):
        assert eq.link is not None
        odd = [
            Message(6, 11, L(U4(1), L(U4(CEID_BOARD_INSPECTED)), L())),  # CEID as a list
            Message(6, 11, L(U4(1), U4(CEID_BOARD_INSPECTED), L(L(L(U4(100)), L(A("x")))))),  # RPTID as a list
            Message(5, 1, L(B(0x80), L(U4(ALID_CONVEYOR)), A("jam"))),  # ALID as a list
            Message(6, 11, L(U4(1), U4(1, 2), L())),  # CEID as an array of two
        ]
        for message in odd:
            with pytest.raises(TransactionRejected, match="S9F7"):
                await eq.link.request(message)
        for body in (_nested(2000), _nested(300)):  # decodable, beyond the decode budget
            await eq.send_raw(frame(0, 0x80 | 6, 11, 0, 0xBEEF, body=body))
            await eq.send_raw(frame(0, 9, 7, 0, 0xBEF0, body=body))  # an S9F7 nested as deep
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0
        assert sum(m.name == "S9F7" for m in eq.received) >= 4
        assert collector.events("connection_lost") == []
        assert len(collector.events("unit_inspected")) == 1
        assert collector.events("fault_occurred") == []


@pytest.mark.asyncio
async def test_a_message_longer_than_max_message_bytes_is_skipped_answered_s9f11_and_the_link_stays() -> None:
    eq, collector = aoi_simulator(), Collector()
    async with running(eq, collector, max_message_bytes="64KiB"):
        assert eq.link is not None
        huge = L(U4(1), U4(CEID_BOARD_INSPECTED), L(L(U4(100), L(A("x" * 200_000)))))
        with pytest.raises(TransactionRejected, match="S9F11"):
            await eq.link.request(Message(6, 11, huge))
        assert await eq.send_event(CEID_BOARD_INSPECTED) == 0
        assert collector.events("connection_lost") == []
