"""OPC UA adapter against a real asyncua pick-and-place server, up to the emit boundary.

The plain server is shared by the module (asyncua servers take ~1 s to start); tests that stop it or need
security start their own. Tests that change a shared node put it back.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest
import pytest_asyncio
from asyncua import ua
from opcua_server import PnPServer
from support import free_port

from emsedge.adapters.base import AdapterContext, EquipmentState
from emsedge.adapters.opcua import adapter as opcua_adapter
from emsedge.adapters.opcua import spec
from emsedge.adapters.opcua.adapter import OpcUaPoller, OpcUaSubscriber
from emsedge.adapters.opcua.config import OpcUaEquipment
from emsedge.errors import AdapterError
from emsedge.schema import Record, TelemetryMessage, utc_iso
from emsedge.supervisor import supervise_adapter

pytestmark = pytest.mark.asyncio(loop_scope="module")

NONE = {"policy": "None", "mode": "None"}


def build(ctx: AdapterContext) -> OpcUaSubscriber | OpcUaPoller:
    """The adapter the registered `opcua` spec builds for this equipment (its shape follows `mode`)."""
    adapter = spec.build(ctx.equipment, ctx)
    assert isinstance(adapter, OpcUaSubscriber | OpcUaPoller)
    return adapter


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[PnPServer]:
    srv = PnPServer()
    await srv.start()
    yield srv
    await srv.stop()


def equipment(url: str, signals: list[dict[str, Any]], **kw: Any) -> OpcUaEquipment:
    connection = {"url": url, "security": NONE, "timeout": "2s", **kw.pop("connection", {})}
    return OpcUaEquipment.model_validate({
        "id": "pnp-1", "type": "pick_and_place", "adapter": "opcua", "connection": connection,
        "publishing_interval": "50ms", "backoff": {"initial": "100ms", "max": "400ms"}, "signals": signals, **kw,
    })


class Collector:
    """An AdapterContext whose emit collects records."""

    def __init__(self, config: OpcUaEquipment) -> None:
        self.records: list[Record] = []
        self.ctx = AdapterContext(config, self._emit)

    async def _emit(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def telemetry(self) -> list[Record]:
        return [r for r in self.records if r.kind == "telemetry"]

    def readings(self, signal: str) -> list[dict[str, Any]]:
        return [x for r in self.telemetry() for x in r.body["readings"] if x["signal"] == signal]

    def events(self, type_: str) -> list[Record]:
        return [r for r in self.records if r.event_type == type_]

    async def wait(self, predicate: Callable[[], bool], limit: float = 20.0) -> None:
        with anyio.fail_after(limit):
            while not predicate():  # noqa: ASYNC110 - polls what emit collected; no event to wait on
                await anyio.sleep(0.02)


PNP_SIGNALS = [
    {"name": "machine_state", "node": "ns=2;s=PnP.State", "event": "station_state", "map": {1: 1100, 2: 2000}},
    {"name": "placed_components", "node": "ns=2;s=PnP.Counters.Placed", "sampling_interval": "20ms"},
    {"name": "boards", "node": "ns=2;s=PnP.Counters.Boards"},
    {"name": "board_serial", "node": "ns=2;s=PnP.BoardSerial"},
    {"name": "reel_id", "browse_path": "0:Objects/2:PnP/2:Feeders/2:Feeder1/2:ReelId"},
    {"name": "head1_vacuum", "browse_path": "0:Objects/2:PnP/2:Heads/2:Head1/2:Vacuum",
     "deadband": {"type": "absolute", "value": 0.5}, "unit": "kPa"},
]


async def test_subscribe_mode_emits_one_telemetry_record_per_publishing_cycle(server: PnPServer) -> None:
    c = Collector(equipment(server.url, PNP_SIGNALS))
    adapter = build(c.ctx)
    assert isinstance(adapter, OpcUaSubscriber)
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, adapter, c.ctx)
        await c.wait(lambda: len(c.readings("reel_id")) == 1)
        initial = c.telemetry()[-1]
        before = len(c.telemetry())
        await server.tick()
        await c.wait(lambda: any(x["value"] == f"SN{server.ticks:04d}" for x in c.readings("board_serial")))
        # A marker written after the cycle: once it arrived, every notification of the cycle did too.
        await server.write("PnP.Feeders.Feeder1.ReelId", "REEL-MARKER", ua.VariantType.String)
        await c.wait(lambda: any(x["value"] == "REEL-MARKER" for x in c.readings("reel_id")))
        tg.cancel_scope.cancel()
    await server.write("PnP.Feeders.Feeder1.ReelId", "REEL-0001", ua.VariantType.String)  # the module's server
    assert c.events("connection_restored")
    assert {x["signal"] for x in initial.body["readings"]} == {s["name"] for s in PNP_SIGNALS}
    *cycle, marker = c.telemetry()[before:]
    assert [x["signal"] for x in marker.body["readings"]] == ["reel_id"]
    # placed, boards and serial changed in one machine cycle: they travel together, not one record per value
    assert len(cycle) == 1
    changed = {x["signal"]: x for x in cycle[0].body["readings"]}
    assert set(changed) == {"placed_components", "boards", "board_serial"}
    assert changed["placed_components"]["value"] == server.ticks * 120
    assert changed["boards"]["quality"] == "good"
    TelemetryMessage.model_validate({"schema": "emsedge/telemetry@1", "id": "x", "seq": 1, "gateway": "g",
                                     "equipment": "pnp-1", "equipment_type": "pick_and_place", "ts": cycle[0].ts,
                                     "readings": cycle[0].body["readings"]})


async def test_reading_ts_is_the_source_timestamp_and_server_ts_is_kept_when_different(server: PnPServer) -> None:
    c = Collector(equipment(server.url, [{"name": "board_serial", "node": "ns=2;s=PnP.BoardSerial"}]))
    source = dt.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=dt.UTC)
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: len(c.readings("board_serial")) == 1)
        await server.write("PnP.BoardSerial", "SN-TS", ua.VariantType.String, source_ts=source)
        await c.wait(lambda: len(c.readings("board_serial")) == 2)
        tg.cancel_scope.cancel()
    reading = c.readings("board_serial")[-1]
    assert reading["value"] == "SN-TS"
    assert reading["ts"] == "2026-03-04T05:06:07.890Z"
    assert reading["server_ts"] > reading["ts"]


async def test_absolute_deadband_suppresses_changes_smaller_than_the_band(server: PnPServer) -> None:
    vacuum = [{"name": "head1_vacuum", "node": "ns=2;s=PnP.Heads.Head1.Vacuum",
               "deadband": {"type": "absolute", "value": 0.5}, "unit": "kPa"},
              {"name": "boards", "node": "ns=2;s=PnP.Counters.Boards"}]
    c = Collector(equipment(server.url, vacuum))
    await server.write("PnP.Heads.Head1.Vacuum", -60.0, ua.VariantType.Double)
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: len(c.readings("head1_vacuum")) == 1)
        for v in (-60.1, -60.3, -59.9, -59.2, -59.4):  # the server applies the deadband at each write
            await server.write("PnP.Heads.Head1.Vacuum", v, ua.VariantType.Double)
        await server.write("PnP.Counters.Boards", 999, ua.VariantType.UInt32)  # a marker after the last change
        await c.wait(lambda: any(x["value"] == 999 for x in c.readings("boards")))
        tg.cancel_scope.cancel()
    # -59.2 is the first value more than 0.5 from the last reported -60.0; -59.4 is within 0.5 of -59.2
    assert [x["value"] for x in c.readings("head1_vacuum")] == [-60.0, pytest.approx(-59.2)]
    assert c.readings("head1_vacuum")[0]["unit"] == "kPa"


async def test_status_codes_map_to_quality_and_keep_the_status_name(server: PnPServer) -> None:
    c = Collector(equipment(server.url, [{"name": "head1_vacuum", "node": "ns=2;s=PnP.Heads.Head1.Vacuum"}]))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(supervise_adapter, build(c.ctx), c.ctx)
            await c.wait(lambda: len(c.readings("head1_vacuum")) == 1)
            await server.write("PnP.Heads.Head1.Vacuum", -61.0, ua.VariantType.Double,
                               status=ua.StatusCodes.BadSensorFailure)
            await c.wait(lambda: len(c.readings("head1_vacuum")) == 2)
            await server.write("PnP.Heads.Head1.Vacuum", -62.0, ua.VariantType.Double,
                               status=ua.StatusCodes.UncertainLastUsableValue)
            await c.wait(lambda: len(c.readings("head1_vacuum")) == 3)
            await server.write("PnP.Heads.Head1.Vacuum", float("nan"), ua.VariantType.Double)
            await c.wait(lambda: len(c.readings("head1_vacuum")) == 4)
            tg.cancel_scope.cancel()
    finally:
        await server.write("PnP.Heads.Head1.Vacuum", -60.0, ua.VariantType.Double)
    good, bad, uncertain, nan = c.readings("head1_vacuum")
    assert good["quality"] == "good"
    assert "status" not in good
    assert (bad["quality"], bad["status"], bad["value"]) == ("bad", "BadSensorFailure", None)
    assert (uncertain["quality"], uncertain["status"], uncertain["value"]) == (
        "uncertain", "UncertainLastUsableValue", -62.0)
    assert (nan["quality"], nan["value"], nan["status"]) == ("bad", None, "BadOutOfRange")


async def test_poll_mode_reads_every_signal_in_chunks_and_converts_variants(server: PnPServer) -> None:
    signals = [*PNP_SIGNALS,
               {"name": "state_text", "node": "ns=2;s=PnP.StateText"},
               {"name": "nozzles", "node": "ns=2;s=PnP.NozzleIds"},
               {"name": "last_board_at", "node": "ns=2;s=PnP.LastBoardAt"},
               {"name": "missing", "node": "ns=2;s=PnP.DoesNotExist"}]
    c = Collector(equipment(server.url, signals, mode="poll", max_nodes_per_read=4))
    poller = build(c.ctx)
    assert isinstance(poller, OpcUaPoller)
    async with poller:
        assert poller._client is not None
        reads: list[int] = []
        real_read = poller._client.uaclient.read

        async def counting_read(params: ua.ReadParameters) -> list[ua.DataValue]:
            reads.append(len(params.NodesToRead))
            return await real_read(params)

        poller._client.uaclient.read = counting_read  # type: ignore[method-assign]
        records = await poller.poll()
    assert reads == [4, 4, 2]
    assert len(records) == 1
    values = {x["signal"]: x for x in records[0].body["readings"]}
    assert [x["signal"] for x in records[0].body["readings"]] == [s["name"] for s in signals]
    assert values["state_text"]["value"] == "Running"
    assert values["nozzles"]["value"] == [11, 12, 13]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", values["last_board_at"]["value"])
    assert values["reel_id"]["value"] == "REEL-0001"
    assert (values["missing"]["quality"], values["missing"]["status"]) == ("bad", "BadNodeIdUnknown")
    offline = poller.offline_records("gone")[0].body["readings"]
    assert {x["quality"] for x in offline} == {"bad"}
    assert len(offline) == len(signals)


async def test_a_browse_path_that_does_not_exist_is_a_permanent_error_naming_the_signal(server: PnPServer) -> None:
    signals = [{"name": "board_serial", "node": "ns=2;s=PnP.BoardSerial"},
               {"name": "head2_vacuum", "browse_path": "0:Objects/2:PnP/2:Heads/2:Head2/2:Vacuum"}]
    c = Collector(equipment(server.url, signals, mode="poll"))
    with pytest.raises(AdapterError) as err:
        async with build(c.ctx):  # type: ignore[union-attr]
            pass
    assert not err.value.transient
    assert "head2_vacuum" in str(err.value)
    assert "0:Objects/2:PnP/2:Heads/2:Head2/2:Vacuum" in str(err.value)
    async with anyio.create_task_group() as tg:  # the poller under the supervisor: failed
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: c.ctx.health.disabled)
        tg.cancel_scope.cancel()
    assert c.ctx.health.state is EquipmentState.FAILED

    c = Collector(equipment(server.url, signals))
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: bool(c.events("connection_lost")))
        tg.cancel_scope.cancel()
    assert "head2_vacuum" in c.events("connection_lost")[0].body["event"]["reason"]
    assert c.ctx.health.disabled
    assert not c.telemetry()[0].body["readings"][0]["value"]


async def test_server_restart_gives_connection_events_and_a_recreated_subscription() -> None:
    srv = PnPServer()
    await srv.start()
    c = Collector(equipment(srv.url, PNP_SIGNALS[:4]))
    adapter = build(c.ctx)
    assert isinstance(adapter, OpcUaSubscriber)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(supervise_adapter, adapter, c.ctx)
            await c.wait(lambda: bool(c.events("connection_restored")) and bool(c.readings("board_serial")))
            await srv.stop()
            await c.wait(lambda: bool(c.events("connection_lost")))
            bad = c.telemetry()[-1].body["readings"]
            assert {x["quality"] for x in bad} == {"bad"}
            assert {x["status"] for x in bad} == {"BadNotConnected"}
            # A refused connect leaves nothing to observe: watch a few retries for a second connection_lost.
            await anyio.sleep(0.5)
            await srv.start()
            await c.wait(lambda: len(c.events("connection_restored")) == 2)
            srv.ticks = 40
            await srv.tick()
            await c.wait(lambda: any(x["value"] == "SN0041" for x in c.readings("board_serial")))
            tg.cancel_scope.cancel()
    finally:
        await srv.stop()
    assert len(c.events("connection_lost")) == 1
    assert adapter.subscription_count == 2
    assert c.ctx.health.connected
    assert c.ctx.health.reconnects == 1


async def test_a_dead_server_address_never_hangs_and_reports_cannot_connect() -> None:
    c = Collector(equipment(f"opc.tcp://127.0.0.1:{free_port()}", PNP_SIGNALS[:1]))
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: bool(c.events("connection_lost")), limit=15)
        await anyio.sleep(0.5)  # a refused connect leaves nothing to observe: a few retries, one connection_lost
        tg.cancel_scope.cancel()
    assert len(c.events("connection_lost")) == 1
    assert not c.ctx.health.disabled
    assert c.telemetry()[0].body["readings"][0]["quality"] == "bad"


async def test_utc_iso_helper_matches_opc_ua_datetimes() -> None:
    assert utc_iso(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) == "2026-01-01T00:00:00.000Z"


async def test_alarms_and_conditions_become_linked_fault_occurred_and_fault_cleared(server: PnPServer) -> None:
    assert server.server is not None
    c = Collector(equipment(server.url, PNP_SIGNALS[:1], events=[{"node": "ns=2;s=PnP", "name": "pnp-alarms"}]))
    gen = await server.server.get_event_generator(ua.ObjectIds.AlarmConditionType, server.nodes["PnP"].nodeid)
    gen.event.ConditionName = "E1042"
    gen.event.Message = ua.LocalizedText("Vacuum low on head 1")
    gen.event.Severity = 700
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: bool(c.events("connection_restored")))  # the event subscription is in place
        for active in (True, True, False):  # the second True is a re-notification (e.g. an acknowledge)
            setattr(gen.event, "ActiveState/Id", active)
            await gen.trigger()
        await c.wait(lambda: bool(c.events("fault_cleared")))
        tg.cancel_scope.cancel()
    occurred, cleared = c.events("fault_occurred"), c.events("fault_cleared")
    assert len(occurred) == 1
    assert len(cleared) == 1
    fault = occurred[0].body["event"]
    assert (fault["fault_code"], fault["message"]) == ("E1042", "Vacuum low on head 1")
    assert fault["text"] == "Vacuum low on head 1"  # the contract's text field, whatever the protocol calls it
    assert (fault["severity"], fault["opcua_severity"]) == ("error", 700)  # 401..800 is error
    assert fault["fault_occurrence_id"] == cleared[0].body["event"]["fault_occurrence_id"]
    assert re.fullmatch(r"\d{4}-.*Z", occurred[0].ts)


async def test_namespace_uri_node_ids_are_re_resolved_when_a_restart_moves_the_namespace_index() -> None:
    srv = PnPServer()
    await srv.start()
    c = Collector(equipment(srv.url, [{"name": "board_serial", "node": "nsu=urn:emsedge:test:pnp;s=PnP.BoardSerial"},
                                      {"name": "reel_id", "node": "ns=2;s=PnP.Feeders.Feeder1.ReelId"}]))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(supervise_adapter, build(c.ctx), c.ctx)
            await c.wait(lambda: len(c.readings("board_serial")) == 1)
            await srv.stop()
            srv.extra_namespaces = 1  # our namespace is now ns=3
            await srv.start()
            # ns=2 is now someone else's namespace: the hard-coded id is a clear error naming its signal
            await c.wait(lambda: "reel_id" in str(c.ctx.health.last_error))
            tg.cancel_scope.cancel()
        c2 = Collector(equipment(srv.url, [{"name": "board_serial",
                                            "node": "nsu=urn:emsedge:test:pnp;s=PnP.BoardSerial"}]))
        async with anyio.create_task_group() as tg:
            await tg.start(supervise_adapter, build(c2.ctx), c2.ctx)
            await srv.write("PnP.BoardSerial", "SN-NS3", ua.VariantType.String)
            await c2.wait(lambda: any(x["value"] == "SN-NS3" for x in c2.readings("board_serial")))
            tg.cancel_scope.cancel()
    finally:
        await srv.stop()
    assert c.ctx.health.disabled
    assert c2.readings("board_serial")[-1]["quality"] == "good"


async def test_a_permanently_broken_signal_recovers_without_restart_once_the_server_has_it(
    server: PnPServer,
) -> None:
    assert server.server is not None
    signals = [{"name": "head3_vacuum", "browse_path": "0:Objects/2:PnP/2:Heads/2:Head3/2:Vacuum"}]
    c = Collector(equipment(server.url, signals))
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: c.ctx.health.disabled)
        heads = server.server.get_node(ua.NodeId("PnP.Heads", 2))
        head3 = await heads.add_object(ua.NodeId("PnP.Heads.Head3", 2), ua.QualifiedName("Head3", 2))
        await head3.add_variable(ua.NodeId("PnP.Heads.Head3.Vacuum", 2), ua.QualifiedName("Vacuum", 2), -55.5)
        await c.wait(lambda: any(x["value"] == -55.5 for x in c.readings("head3_vacuum")))  # backoff.max is 0.4 s
        tg.cancel_scope.cancel()
    assert not c.ctx.health.disabled
    assert c.events("connection_restored")


async def test_poll_mode_asks_for_a_reconnect_when_every_node_is_unknown(server: PnPServer) -> None:
    # what a restarted server that renumbered its nodes looks like: a fresh connection re-resolves them
    signals = [{"name": "a", "node": "ns=2;s=PnP.Gone1"}, {"name": "b", "node": "ns=2;i=424242"}]
    poller = build(Collector(equipment(server.url, signals, mode="poll")).ctx)
    assert isinstance(poller, OpcUaPoller)
    async with poller:
        with pytest.raises(AdapterError, match="every node is unknown") as err:
            await poller.poll()
    assert err.value.transient


async def test_notifications_dropped_from_a_full_queue_are_counted_as_loss(
    server: PnPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled emit (a busy disk) while the server keeps publishing overflows asyncua's notification
    queue; every notification it drops reaches `count_loss("opcua_queue_overflow", n)`."""
    monkeypatch.setattr(opcua_adapter, "QUEUE_FLOOR", 8)
    signals = [{"name": "placed_components", "node": "ns=2;s=PnP.Counters.Placed"},
               {"name": "boards", "node": "ns=2;s=PnP.Counters.Boards"},
               {"name": "board_serial", "node": "ns=2;s=PnP.BoardSerial"}]
    c = Collector(equipment(server.url, signals))  # queue: max(8, 8 x 3 x queue_size 1) = 24 notifications
    losses: list[tuple[str, int]] = []

    async def count_loss(reason: str, count: int) -> None:
        losses.append((reason, count))

    c.ctx.loss_counter = count_loss
    held, release = anyio.Event(), anyio.Event()
    inner = c.ctx.emit

    async def stalling_emit(records: Sequence[Record]) -> None:
        if held.is_set():
            await release.wait()
        await inner(records)

    c.ctx.emit = stalling_emit
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, build(c.ctx), c.ctx)
        await c.wait(lambda: len(c.readings("board_serial")) == 1)
        held.set()
        for _ in range(40):  # 3 changes per cycle, 40 cycles: far more than the queue holds
            await server.tick()
            await anyio.sleep(0.06)
        release.set()
        await c.wait(lambda: bool(losses))
        tg.cancel_scope.cancel()
    assert {reason for reason, _ in losses} == {"opcua_queue_overflow"}
    lost = sum(count for _, count in losses)
    assert lost > 0
    assert c.ctx.health.losses == {"opcua_queue_overflow": lost}
    delivered = len(c.readings("board_serial")) + len(c.readings("boards")) + len(c.readings("placed_components"))
    assert delivered + lost >= 24 + 1  # what the queue held plus what it dropped
