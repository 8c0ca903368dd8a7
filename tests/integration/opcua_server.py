"""An asyncua server modelling a pick-and-place machine, for tests and the benchmark.

Address space (namespace 2, string NodeIds so tests can name them):

    Objects/PnP                      ns=2;s=PnP
      State            Int32         ns=2;s=PnP.State          1 running, 2 idle, 3 error
      StateText        LocalizedText ns=2;s=PnP.StateText
      BoardSerial      String        ns=2;s=PnP.BoardSerial
      LastBoardAt      DateTime      ns=2;s=PnP.LastBoardAt
      NozzleIds        Int32[]       ns=2;s=PnP.NozzleIds
      Counters/Placed  UInt32        ns=2;s=PnP.Counters.Placed
      Counters/Boards  UInt32        ns=2;s=PnP.Counters.Boards
      Heads/Head1/Vacuum  Double     ns=2;s=PnP.Heads.Head1.Vacuum   (kPa)
      Feeders/Feeder1/ReelId String  ns=2;s=PnP.Feeders.Feeder1.ReelId
      Bulk/Item00000..  Double       ns=2;s=PnP.Bulk.<n>   (only when bulk > 0: benchmark)

`tick()` changes the values deterministically; `start_changing(interval)` ticks in the background (the
caller's task group owns that loop). The server runs in the caller's event loop and can be stopped and
started again on the same port with the same NodeIds (a machine restart).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from support import free_port

NS_URI = "urn:emsedge:test:pnp"


class _Users(UserManager):
    """Accepts exactly the configured user names and passwords."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User)
        return None


@dataclass
class PnPServer:
    port: int = field(default_factory=free_port)
    security: list[ua.SecurityPolicyType] | None = None  # None: NoSecurity only
    certificate: Path | None = None
    private_key: Path | None = None
    bulk: int = 0
    users: dict[str, str] | None = None
    extra_namespaces: int = 0  # registered before ours: moves the PnP namespace index (a firmware update)
    server: Server | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    ticks: int = 0
    bulk_nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/pnp"

    async def start(self) -> None:
        server = Server(user_manager=_Users(self.users) if self.users is not None else None)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("emsedge test pick-and-place")
        server.set_security_policy(self.security or [ua.SecurityPolicyType.NoSecurity])
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        for n in range(self.extra_namespaces):
            await server.register_namespace(f"urn:emsedge:test:vendor{n}")
        ns = await server.register_namespace(NS_URI)
        objects = server.nodes.objects
        pnp = await objects.add_object(ua.NodeId("PnP", ns), ua.QualifiedName("PnP", ns))
        self.nodes["PnP"] = pnp

        async def var(parent: Node, key: str, name: str, value: Any, vtype: ua.VariantType) -> Node:
            node = await parent.add_variable(ua.NodeId(key, ns), ua.QualifiedName(name, ns), ua.Variant(value, vtype))
            self.nodes[key] = node
            return node

        await var(pnp, "PnP.State", "State", 1, ua.VariantType.Int32)
        await var(pnp, "PnP.StateText", "StateText", ua.LocalizedText("Running", "en"), ua.VariantType.LocalizedText)
        await var(pnp, "PnP.BoardSerial", "BoardSerial", "SN0000", ua.VariantType.String)
        await var(pnp, "PnP.LastBoardAt", "LastBoardAt", dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                  ua.VariantType.DateTime)
        await var(pnp, "PnP.NozzleIds", "NozzleIds", [11, 12, 13], ua.VariantType.Int32)
        counters = await pnp.add_object(ua.NodeId("PnP.Counters", ns), ua.QualifiedName("Counters", ns))
        await var(counters, "PnP.Counters.Placed", "Placed", 0, ua.VariantType.UInt32)
        await var(counters, "PnP.Counters.Boards", "Boards", 0, ua.VariantType.UInt32)
        heads = await pnp.add_object(ua.NodeId("PnP.Heads", ns), ua.QualifiedName("Heads", ns))
        head1 = await heads.add_object(ua.NodeId("PnP.Heads.Head1", ns), ua.QualifiedName("Head1", ns))
        await var(head1, "PnP.Heads.Head1.Vacuum", "Vacuum", -60.0, ua.VariantType.Double)
        feeders = await pnp.add_object(ua.NodeId("PnP.Feeders", ns), ua.QualifiedName("Feeders", ns))
        feeder1 = await feeders.add_object(ua.NodeId("PnP.Feeders.Feeder1", ns), ua.QualifiedName("Feeder1", ns))
        await var(feeder1, "PnP.Feeders.Feeder1.ReelId", "ReelId", "REEL-0001", ua.VariantType.String)
        if self.bulk:
            bulk = await pnp.add_object(ua.NodeId("PnP.Bulk", ns), ua.QualifiedName("Bulk", ns))
            self.bulk_nodes = await _add_doubles(server, bulk.nodeid, ns, self.bulk)
        self.server = server
        await server.start()

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    async def write(self, key: str, value: Any, vtype: ua.VariantType | None = None,
                    status: int = ua.StatusCodes.Good, source_ts: dt.datetime | None = None) -> None:
        """Set a value with a status and source timestamp, as the machine's firmware would."""
        assert self.server is not None
        now = dt.datetime.now(dt.UTC)
        dv = ua.DataValue(
            ua.Variant(value, vtype) if vtype is not None else ua.Variant(value),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=source_ts or now,
            ServerTimestamp=now,
        )
        await self.server.write_attribute_value(self.nodes[key].nodeid, dv)

    async def tick(self) -> None:
        """One machine cycle: a board placed, counters up, vacuum wobbles, a new serial."""
        self.ticks += 1
        t = self.ticks
        await self.write("PnP.Counters.Placed", t * 120, ua.VariantType.UInt32)
        await self.write("PnP.Counters.Boards", t, ua.VariantType.UInt32)
        await self.write("PnP.Heads.Head1.Vacuum", -60.0 + (t % 5) * 0.1, ua.VariantType.Double)
        await self.write("PnP.BoardSerial", f"SN{t:04d}", ua.VariantType.String)
        await self.write("PnP.LastBoardAt", dt.datetime.now(dt.UTC), ua.VariantType.DateTime)

    async def tick_bulk(self) -> float:
        """Change every bulk item once; returns the wall time the change was stamped with."""
        assert self.server is not None
        self.ticks += 1
        now = dt.datetime.now(dt.UTC)
        for i, node in enumerate(self.bulk_nodes):
            dv = ua.DataValue(ua.Variant(float(self.ticks * 100_000 + i), ua.VariantType.Double),
                              SourceTimestamp=now, ServerTimestamp=now)
            await self.server.write_attribute_value(node.nodeid, dv)
        return now.timestamp()

    async def change_forever(self, interval: float) -> None:
        while True:
            await self.tick()
            await anyio.sleep(interval)


async def _add_doubles(server: Server, parent: ua.NodeId, ns: int, count: int) -> list[Node]:
    """Bulk Double variables `PnP.Bulk.<n>`, 100 per folder (asyncua adds children in O(siblings)), added in
    AddNodes calls of 1,000."""
    groups = []
    for g in range(0, count, 100):
        folder = ua.NodeId(f"PnP.Bulk.G{g // 100:03d}", ns)
        groups.append(await server.get_node(parent).add_folder(folder, ua.QualifiedName(f"G{g // 100:03d}", ns)))
    items = []
    for i in range(count):
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = ua.NodeId(f"PnP.Bulk.{i}", ns)
        item.BrowseName = ua.QualifiedName(f"Item{i:05d}", ns)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = groups[i // 100].nodeid
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(f"Item{i:05d}")
        attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
        attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
        attrs.ValueRank = ua.ValueRank.Scalar
        attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        item.NodeAttributes = attrs
        items.append(item)
    nodes: list[Node] = []
    for start in range(0, count, 1000):
        results = await server.iserver.isession.add_nodes(items[start : start + 1000])
        for r in results:
            r.StatusCode.check()
            nodes.append(server.get_node(r.AddedNodeId))
    return nodes
