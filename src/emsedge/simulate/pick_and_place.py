"""The virtual pick-and-place: an asyncua server showing the line model's placement machine.

Address space (namespace `urn:emsedge:virtual-line:pnp`, index 2, string NodeIds):

    Objects/PnP                          ns=2;s=PnP
      State             String           running | idle | blocked | starved | down | setup
      Program           String           placement program loaded
      BoardSerial       String           serial of the board being placed (the last one while waiting)
      CycleTime         Double  s        last board's cycle time
      Counters/PlacedComponents UInt32   components placed since start
      Counters/PickErrors       UInt32   failed picks (retried) since start
      Counters/BoardsCompleted  UInt32
      Head/Vacuum       Double  kPa      about -82 kPa; a failed pick or a jam loses vacuum
      Head/NozzleIds    String[]
      Feeders/Slot<n>/ReelId, PartNumber (String), RefDesignators (String[])   n = 1..feeders
      Alarm/Active (Boolean), Alarm/Code (UInt32), Alarm/Text (String)

The alarm is modelled as nodes, not as an OPC UA Alarms & Conditions event: the profile turns
`Alarm/Active` into fault_occurred/fault_cleared with a trigger, which any client can read.

Values are written only when they change, with the line time turned into a source timestamp, so a
subscription sees one notification per real change. The server can be stopped and started again on the
same port with the same NodeIds (an outage from the fault schedule).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server

from emsedge.simulate.line import Line

NS_URI = "urn:emsedge:virtual-line:pnp"

for _name in ("asyncua",):
    logging.getLogger(_name).setLevel(logging.ERROR)  # its server warns about unused security endpoints


class PickAndPlaceServer:
    def __init__(self, line: Line) -> None:
        self.line = line
        self.cfg = line.config.pick_and_place
        self.server: Server | None = None
        self.nodes: dict[str, tuple[Node, ua.VariantType]] = {}
        self.written: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.cfg.host}:{self.cfg.port}/emsedge/pnp"

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"emsedge virtual pick-and-place {self.cfg.id}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace(NS_URI)
        self.nodes = {}
        self.written = {}
        pnp = await server.nodes.objects.add_object(_node_id("PnP", ns), ua.QualifiedName("PnP", ns))

        async def folder(parent: Node, key: str, name: str) -> Node:
            return await parent.add_object(_node_id(key, ns), ua.QualifiedName(name, ns))

        async def var(parent: Node, key: str, name: str, value: Any, vtype: ua.VariantType) -> None:
            node = await parent.add_variable(_node_id(key, ns), ua.QualifiedName(name, ns), ua.Variant(value, vtype))
            self.nodes[key] = (node, vtype)

        s, d, u, b = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.UInt32, ua.VariantType.Boolean
        await var(pnp, "PnP.State", "State", "setup", s)
        await var(pnp, "PnP.Program", "Program", self.cfg.program, s)
        await var(pnp, "PnP.BoardSerial", "BoardSerial", "", s)
        await var(pnp, "PnP.CycleTime", "CycleTime", 0.0, d)
        counters = await folder(pnp, "PnP.Counters", "Counters")
        await var(counters, "PnP.Counters.PlacedComponents", "PlacedComponents", 0, u)
        await var(counters, "PnP.Counters.PickErrors", "PickErrors", 0, u)
        await var(counters, "PnP.Counters.BoardsCompleted", "BoardsCompleted", 0, u)
        head = await folder(pnp, "PnP.Head", "Head")
        await var(head, "PnP.Head.Vacuum", "Vacuum", -82.0, d)
        await var(head, "PnP.Head.NozzleIds", "NozzleIds", list(self.cfg.nozzles), s)
        feeders = await folder(pnp, "PnP.Feeders", "Feeders")
        for n in range(1, len(self.cfg.feeders) + 1):
            slot = await folder(feeders, f"PnP.Feeders.Slot{n}", f"Slot{n}")
            await var(slot, f"PnP.Feeders.Slot{n}.ReelId", "ReelId", "", s)
            await var(slot, f"PnP.Feeders.Slot{n}.PartNumber", "PartNumber", "", s)
            await var(slot, f"PnP.Feeders.Slot{n}.RefDesignators", "RefDesignators", [], s)
        alarm = await folder(pnp, "PnP.Alarm", "Alarm")
        await var(alarm, "PnP.Alarm.Active", "Active", False, b)
        await var(alarm, "PnP.Alarm.Code", "Code", 0, u)
        await var(alarm, "PnP.Alarm.Text", "Text", "", s)
        await server.start()
        self.server = server
        await self.publish()

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    def values(self) -> dict[str, Any]:
        """The machine's current values by NodeId key, read from the line model."""
        m = self.line.pick_and_place
        code, text = m.alarm if m.alarm is not None else (0, "")
        out: dict[str, Any] = {
            "PnP.State": m.state,
            "PnP.Program": m.program,
            "PnP.BoardSerial": m.board_serial,
            "PnP.CycleTime": m.last_cycle_time,
            "PnP.Counters.PlacedComponents": m.placed_components,
            "PnP.Counters.PickErrors": m.pick_errors,
            "PnP.Counters.BoardsCompleted": m.boards_completed,
            "PnP.Head.Vacuum": round(m.head_vacuum, 1),
            "PnP.Head.NozzleIds": list(m.nozzles),
            "PnP.Alarm.Active": m.alarm is not None,
            "PnP.Alarm.Code": code,
            "PnP.Alarm.Text": text,
        }
        for n, (feeder, reel) in enumerate(zip(m.cfg.feeders, m.reels, strict=True), start=1):
            out[f"PnP.Feeders.Slot{n}.ReelId"] = reel.reel_id
            out[f"PnP.Feeders.Slot{n}.PartNumber"] = reel.part_number
            out[f"PnP.Feeders.Slot{n}.RefDesignators"] = list(feeder.ref_designators)
        return out

    async def publish(self) -> None:
        """Write every value that changed since the last call (no-op while the server is down).

        The board serial is written last, so a subscriber that sees a new serial has already been sent
        the reels that board uses.
        """
        if self.server is None:
            return
        now = cast(ua.DateTime, dt.datetime.now(dt.UTC))
        values = self.values()
        serial = values.pop("PnP.BoardSerial")
        values["PnP.BoardSerial"] = serial
        for key, value in values.items():
            if self.written.get(key, _NOTHING) == value:
                continue
            node, vtype = self.nodes[key]
            dv = ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now)
            await self.server.write_attribute_value(node.nodeid, dv)
            self.written[key] = value


_NOTHING = object()


def _node_id(key: str, ns: int) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns={ns};s={key}")
