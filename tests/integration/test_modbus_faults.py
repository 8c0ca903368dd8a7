"""Timeouts, lost connections and recovery of the Modbus adapter through the real poll scheduler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from modbus_server import ModbusTestServer, RegisterImage, free_port

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.adapter import ModbusAdapter
from emsedge.adapters.modbus.config import ModbusEquipment
from emsedge.errors import AdapterError
from emsedge.schema import Record
from emsedge.supervisor import supervise_adapter


def equipment(port: int) -> ModbusEquipment:
    return ModbusEquipment.model_validate(
        {
            "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": "200ms"},
            "poll_interval": "50ms",
            "backoff": {"initial": "50ms", "max": "100ms"},
            "signals": [
                {"name": "zone1", "table": "holding", "address": 0, "type": "float32", "unit": "Cel"},
                {"name": "speed", "table": "input", "address": 0, "type": "uint16"},
            ],
        }
    )


class Recorder:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.changed = anyio.Event()

    async def emit(self, records: Sequence[Record]) -> None:
        self.records.extend(records)
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(15):
            while not predicate():
                await self.changed.wait()

    def events(self) -> list[str]:
        return [r.body["event"]["type"] for r in self.records if r.kind == "event"]

    def telemetry(self) -> list[dict[str, Any]]:
        return [r.body for r in self.records if r.kind == "telemetry"]

    async def wait_for(self, event: str, count: int = 1) -> None:
        await self.until(lambda: self.events().count(event) >= count)


class SilentServer:
    """Accepts TCP connections and never answers: the equipment hangs mid-request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port) as listener:
            task_status.started()
            await listener.serve(self._hold)

    async def _hold(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            while True:
                try:
                    await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return


def image() -> RegisterImage:
    regs = RegisterImage()
    regs.put(0, "float32", 245.5)
    return regs


@pytest.mark.asyncio
async def test_a_server_that_never_answers_raises_a_transient_error_within_the_timeout() -> None:
    silent = SilentServer(free_port())
    async with anyio.create_task_group() as tg:
        await tg.start(silent.serve)
        adapter = ModbusAdapter(AdapterContext(equipment=equipment(silent.port), emit=Recorder().emit))
        with anyio.fail_after(2):
            async with adapter:
                before = anyio.current_time()
                with pytest.raises(AdapterError) as info:
                    await adapter.poll()
                elapsed = anyio.current_time() - before
        tg.cancel_scope.cancel()
    assert info.value.transient
    assert "within 0.2s" in str(info.value)
    assert elapsed < 1.0


@pytest.mark.asyncio
async def test_a_hung_server_gives_connection_lost_and_bad_readings_then_recovery_when_it_answers_again() -> None:
    port = free_port()
    rec = Recorder()
    ctx = AdapterContext(equipment=equipment(port), emit=rec.emit)
    adapter = ModbusAdapter(ctx)
    async with anyio.create_task_group() as tg:
        # 1. The real server answers: connected, good values.
        server = ModbusTestServer(holding=image().registers(4), input=[1234], port=port)
        await server.start()
        await tg.start(supervise_adapter, adapter, ctx, 0.05)
        await rec.wait_for("connection_restored")
        await rec.until(lambda: bool(rec.telemetry()))
        first = {r["signal"]: r for r in rec.telemetry()[0]["readings"]}
        assert first["zone1"]["value"] == 245.5
        assert first["speed"]["value"] == 1234
        assert first["zone1"]["quality"] == "good"

        # 2. The server goes away; a hung one takes its port: timeouts -> connection_lost + bad readings.
        await server.stop()
        silent_scope = anyio.CancelScope()
        silent_closed = anyio.Event()

        async def run_silent(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                with silent_scope:
                    await SilentServer(port).serve(task_status=task_status)
            finally:
                silent_closed.set()  # the listener is closed: the port is free again

        await tg.start(run_silent)
        await rec.wait_for("connection_lost")
        lost_at = next(i for i, r in enumerate(rec.records) if r.kind == "event"
                       and r.body["event"]["type"] == "connection_lost")
        offline = rec.records[lost_at + 1].body["readings"]
        assert [r["quality"] for r in offline] == ["bad", "bad"]
        assert [r["value"] for r in offline] == [None, None]
        assert not ctx.health.connected

        # 3. The real server is back on the same port: reconnect, connection_restored, good values again.
        silent_scope.cancel()
        await silent_closed.wait()
        server = ModbusTestServer(holding=image().registers(4), input=[99], port=port)
        await server.start()
        await rec.wait_for("connection_restored", count=2)
        await rec.until(lambda: rec.telemetry()[-1]["readings"][1]["value"] == 99)
        assert ctx.health.connected
        assert ctx.health.reconnects >= 1
        tg.cancel_scope.cancel()
    await server.stop()
    # One outage, reported once: no restored/lost flapping while the hung server accepts TCP but never answers.
    events = rec.events()
    assert events[0] == "connection_restored"
    assert events[-1] == "connection_restored"
    assert set(events[1:-1]) == {"connection_lost"}
    assert len(events) <= 4  # lost (socket closed), maybe lost again (timeouts: a new reason), restored


@pytest.mark.asyncio
async def test_a_server_that_stops_gives_connection_lost_and_the_other_equipment_keeps_polling() -> None:
    healthy_port, dying_port = free_port(), free_port()
    healthy_rec, dying_rec = Recorder(), Recorder()
    healthy_ctx = AdapterContext(equipment=equipment(healthy_port), emit=healthy_rec.emit)
    dying_ctx = AdapterContext(equipment=equipment(dying_port), emit=dying_rec.emit)
    async with ModbusTestServer(holding=image().registers(4), port=healthy_port), anyio.create_task_group() as tg:
        dying = ModbusTestServer(holding=image().registers(4), port=dying_port)
        await dying.start()
        await tg.start(supervise_adapter, ModbusAdapter(healthy_ctx), healthy_ctx, 0.05)
        await tg.start(supervise_adapter, ModbusAdapter(dying_ctx), dying_ctx, 0.05)
        await dying_rec.wait_for("connection_restored")
        await dying.stop()
        await dying_rec.wait_for("connection_lost")
        polls = healthy_ctx.health.polls
        with anyio.fail_after(15):  # three more healthy polls while the other one is down
            while healthy_ctx.health.polls < polls + 3:  # noqa: ASYNC110 - a plain counter, no event to wait on
                await anyio.sleep(0.01)
        assert healthy_rec.events() == ["connection_restored"]
        assert dying_ctx.health.disabled is False
        tg.cancel_scope.cancel()
