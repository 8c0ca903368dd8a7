"""A small passive GEM equipment on the same HSMS code: the base of HSMS simulators and test peers.

It answers what a GEM host sends while establishing and polling (S1F1, S1F3, S1F11, S1F13, S2F17,
S2F33, S2F35, S2F37, S5F3, S5F5) and can send event reports (S6F11, built from the reports the host
defined and linked) and alarm reports (S5F1). Values come from `data_values` / `status_variables`:
a plain Python value, an `Item`, or a zero-argument callable returning either.

Unlike secsgem it keeps its listening socket open and serves one connection after another, so a
host may reconnect. Test knobs (`mute`, `link.answer_linktest`, `separate()`, `send_raw()`) play the
misbehaving peers that secsgem cannot.

Invariants: one connection at a time; `serve()` owns its tasks; report definitions live as long as
the object (a real tool would persist them; the host deletes and redefines them anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.abc import SocketListener, TaskStatus

from emsedge.adapters.hsms.config import HsmsConnection
from emsedge.adapters.hsms.connection import HsmsClosed, HsmsLink, Message, RejectReason
from emsedge.adapters.hsms.secs2 import BOOLEAN, F8, U4, A, B, Item, L

__all__ = ["GemEquipment", "SimAlarm", "SimStatusVariable", "to_item"]

ValueSource = Any  # python value | Item | Callable[[], python value | Item]


def to_item(value: Any) -> Item:
    """Plain Python value -> the natural SECS-II item (str -> A, bool -> BOOLEAN, int -> U4/I4/U8/I8...)."""
    if isinstance(value, Item):
        return value
    if callable(value):
        return to_item(value())
    if value is None:
        return L()
    if isinstance(value, bool):
        return BOOLEAN(value)
    if isinstance(value, int):
        if 0 <= value <= 0xFFFFFFFF:
            return U4(value)
        if -(1 << 31) <= value < 0:
            return Item("I4", (value,))
        return Item("I8" if value < 0 else "U8", (value,))
    if isinstance(value, float):
        return F8(value)
    if isinstance(value, bytes):
        return Item("B", value)
    if isinstance(value, str):
        return A(value)
    if isinstance(value, list | tuple):
        return L(*[to_item(v) for v in value])
    raise TypeError(f"no SECS-II item for {type(value).__name__}")


@dataclass
class SimStatusVariable:
    name: str
    value: ValueSource
    unit: str = ""


@dataclass
class SimAlarm:
    text: str
    category: int = 4  # ALCD bits 0-6: parameter control error
    enabled: bool = False
    active: bool = False


@dataclass
class GemEquipment:
    """Passive GEM equipment. `await tg.start(eq.serve)` returns once it listens on `eq.port`."""

    host: str = "127.0.0.1"
    port: int = 0
    session_id: int = 0
    name: str = "gem-equipment"
    mdln: str = "EMSEDGE-SIM"
    softrev: str = "1.0"
    t3: float = 10.0
    t6: float = 5.0
    t7: float = 10.0
    t8: float = 5.0
    linktest_interval: float = 0.0
    status_variables: dict[int, SimStatusVariable] = field(default_factory=dict)
    data_values: dict[int, ValueSource] = field(default_factory=dict)
    collection_events: dict[int, str] = field(default_factory=dict)
    alarms: dict[int, SimAlarm] = field(default_factory=dict)
    mute: set[tuple[int, int]] = field(default_factory=set)
    """(stream, function) pairs received but never answered: a peer that makes the host hit T3."""
    reject_first: int = 0
    """Reject this many data messages of each connection with "entity not selected" (secsgem's race)."""

    def __post_init__(self) -> None:
        self.log = structlog.get_logger("emsedge.simulate.hsms").bind(equipment=self.name)
        self.reports: dict[int, list[int]] = {}
        self.links: dict[int, list[int]] = {}
        self.enabled_events: set[int] = set()
        self.communicating = False
        self.link: HsmsLink | None = None
        self.connections = 0
        self.received: list[Message] = []
        self.last_close_reason: str | None = None
        self._dataid = 0
        self._rejects_left = 0
        self._connected = anyio.Event()
        self._ready = anyio.Event()
        self._disconnected = anyio.Event()

    # ------------------------------------------------------------------------------------------------
    # serving

    def _connection_config(self) -> HsmsConnection:
        return HsmsConnection(
            host=self.host, port=max(self.port, 1), session_id=self.session_id, mode="passive",
            t3=self.t3, t5=1.0, t6=self.t6, t7=self.t7, t8=self.t8, linktest_interval=self.linktest_interval,
        )

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve connections one after another, forever."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener:
            socket_listener: SocketListener = listener.listeners[0]  # type: ignore[assignment]
            self.port = int(socket_listener.extra(anyio.abc.SocketAttribute.local_port))
            task_status.started(self.port)
            while True:
                stream = await socket_listener.accept()
                await self._serve_connection(stream)

    async def _serve_connection(self, stream: anyio.abc.ByteStream) -> None:
        link = HsmsLink(stream, self._connection_config(), self.log, self._on_primary, passive=True)
        self.link = link
        self.connections += 1
        self.communicating = False
        self._rejects_left = self.reject_first
        self._connected.set()
        try:
            self.last_close_reason = await link.run()
        finally:
            self.link = None
            self.communicating = False
            self._ready = anyio.Event()
            self._connected = anyio.Event()
            self._disconnected.set()
            self._disconnected = anyio.Event()
        self.log.info("host connection ended", reason=self.last_close_reason)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_ready(self) -> None:
        """Until the host established communication and enabled at least one event report."""
        await self._ready.wait()

    async def wait_disconnected(self) -> None:
        """Until the current host connection ended (at once when none is connected)."""
        if self.link is not None:
            await self._disconnected.wait()

    def _require_link(self) -> HsmsLink:
        if self.link is None:
            raise HsmsClosed("no host connected")
        return self.link

    # ------------------------------------------------------------------------------------------------
    # equipment-initiated messages

    def _next_dataid(self) -> int:
        self._dataid = self._dataid % 0xFFFFFFFF + 1
        return self._dataid

    def value_of(self, vid: int) -> Item:
        if vid in self.data_values:
            return to_item(self.data_values[vid])
        if vid in self.status_variables:
            return to_item(self.status_variables[vid].value)
        return L()

    def event_report_body(self, ceid: int) -> Item:
        reports = [L(U4(rptid), L(*[self.value_of(vid) for vid in self.reports.get(rptid, [])]))
                   for rptid in self.links.get(ceid, [])]
        return L(U4(self._next_dataid()), U4(ceid), L(*reports))

    async def send_event(self, ceid: int, *, force: bool = False) -> int | None:
        """S6F11 for `ceid` (if the host enabled it, or `force`); return ACKC6, None when not sent."""
        if not force and ceid not in self.enabled_events:
            return None
        reply = await self._require_link().request(Message(6, 11, self.event_report_body(ceid)))
        return int(reply.body.value[0]) if reply.body is not None and reply.body.fmt != "L" else None

    async def _alarm_report(self, alid: int, *, active: bool) -> int | None:
        alarm = self.alarms[alid]
        if alarm.active == active:
            return None
        alarm.active = active
        if not alarm.enabled:
            return None
        alcd = (0x80 if active else 0) | (alarm.category & 0x7F)
        reply = await self._require_link().request(Message(5, 1, L(B(alcd), U4(alid), A(alarm.text))))
        return int(reply.body.value[0]) if reply.body is not None and reply.body.fmt != "L" else None

    async def set_alarm(self, alid: int) -> int | None:
        """S5F1 with ALCD bit 7 set (if the host enabled the alarm); return ACKC5."""
        return await self._alarm_report(alid, active=True)

    async def clear_alarm(self, alid: int) -> int | None:
        return await self._alarm_report(alid, active=False)

    async def terminal_message(self, text: str) -> None:
        await self._require_link().request(Message(10, 1, L(B(0), A(text))))

    async def separate(self) -> None:
        await self._require_link().separate("separate sent by equipment")

    async def send_raw(self, data: bytes) -> None:
        await self._require_link().send_raw(data)

    # ------------------------------------------------------------------------------------------------
    # host-initiated messages

    async def _on_primary(self, link: HsmsLink, msg: Message) -> None:
        self.received.append(msg)
        del self.received[:-1000]
        key = (msg.stream, msg.function)
        if key in self.mute:
            return
        if self._rejects_left > 0:
            self._rejects_left -= 1
            await link.reject(msg, RejectReason.ENTITY_NOT_SELECTED)
            return
        handler = _HANDLERS.get(key)
        if handler is None:
            if msg.wbit:
                await link.send_s9(5 if msg.stream in (1, 2, 5, 6, 7, 10) else 3, msg)
            return
        try:
            body = handler(self, msg.body)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            self.log.warning("malformed host message answered S9F7", message=msg.name, error=str(exc))
            await link.send_s9(7, msg)
            return
        if msg.wbit:
            await link.reply(msg, msg.stream, msg.function + 1, body)
        if self.communicating and self.enabled_events:
            self._ready.set()

    def _s1f1(self, body: Item | None) -> Item:
        return L(A(self.mdln), A(self.softrev))

    def _s1f13(self, body: Item | None) -> Item:
        self.communicating = True
        return L(B(0), L(A(self.mdln), A(self.softrev)))

    def _s1f3(self, body: Item | None) -> Item:
        svids = [item.scalar() for item in body.items] if body is not None and body.fmt == "L" else []
        if not svids:
            svids = list(self.status_variables)
        return L(*[to_item(self.status_variables[s].value) if s in self.status_variables else L() for s in svids])

    def _s1f11(self, body: Item | None) -> Item:
        svids = [item.scalar() for item in body.items] if body is not None and body.fmt == "L" else []
        if not svids:
            svids = list(self.status_variables)
        entries = []
        for svid in svids:
            sv = self.status_variables.get(svid)
            entries.append(L(U4(svid), A(sv.name if sv else ""), A(sv.unit if sv else "")))
        return L(*entries)

    def _s2f17(self, body: Item | None) -> Item:
        now = time.time()
        return A(time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 100):02d}")

    def _s2f33(self, body: Item | None) -> Item:
        if body is None or body.fmt != "L" or len(body) != 2:
            return B(1)
        definitions = body[1].items
        if not definitions:
            self.reports.clear()
            self.links.clear()
            return B(0)
        known_vids = set(self.data_values) | set(self.status_variables)
        parsed = [(d[0].scalar(), [v.scalar() for v in d[1].items]) for d in definitions]
        for rptid, vids in parsed:
            if vids and rptid in self.reports:
                return B(3)  # RPTID already defined
            if any(v not in known_vids for v in vids):
                return B(4)  # VID does not exist
        for rptid, vids in parsed:
            if vids:
                self.reports[rptid] = vids
            else:
                self.reports.pop(rptid, None)
        return B(0)

    def _s2f35(self, body: Item | None) -> Item:
        if body is None or body.fmt != "L" or len(body) != 2:
            return B(1)
        parsed = [(e[0].scalar(), [r.scalar() for r in e[1].items]) for e in body[1].items]
        for ceid, rptids in parsed:
            if self.collection_events and ceid not in self.collection_events:
                return B(4)  # CEID does not exist
            if any(r not in self.reports for r in rptids):
                return B(5)  # RPTID does not exist
            if rptids and self.links.get(ceid):
                return B(3)  # CEID already linked
        for ceid, rptids in parsed:
            if rptids:
                self.links[ceid] = rptids
            else:
                self.links.pop(ceid, None)
        return B(0)

    def _s2f37(self, body: Item | None) -> Item:
        if body is None or body.fmt != "L" or len(body) != 2:
            return B(1)
        enable = bool(body[0].scalar())
        ceids = [c.scalar() for c in body[1].items] or list(self.collection_events or self.links)
        if enable:
            self.enabled_events.update(ceids)
        elif not body[1].items:
            self.enabled_events.clear()
        else:
            self.enabled_events.difference_update(ceids)
        return B(0)

    def _s5f3(self, body: Item | None) -> Item:
        if body is None or body.fmt != "L" or len(body) != 2:
            return B(1)
        enable = bool(body[0].value[0] & 0x80) if body[0].value else False
        alids = list(body[1].value) if body[1].fmt != "L" else []
        targets = alids or list(self.alarms)
        if any(a not in self.alarms for a in targets):
            return B(1)
        for alid in targets:
            self.alarms[alid].enabled = enable
        return B(0)

    def _s5f5(self, body: Item | None) -> Item:
        alids = list(body.value) if body is not None and body.fmt != "L" else []
        entries = []
        for alid in alids or list(self.alarms):
            alarm = self.alarms.get(alid)
            if alarm is not None:
                alcd = (0x80 if alarm.active else 0) | alarm.category
                entries.append(L(B(alcd), U4(alid), A(alarm.text)))
        return L(*entries)


_HANDLERS: dict[tuple[int, int], Callable[[GemEquipment, Item | None], Item]] = {
    (1, 1): GemEquipment._s1f1,
    (1, 3): GemEquipment._s1f3,
    (1, 11): GemEquipment._s1f11,
    (1, 13): GemEquipment._s1f13,
    (2, 17): GemEquipment._s2f17,
    (2, 33): GemEquipment._s2f33,
    (2, 35): GemEquipment._s2f35,
    (2, 37): GemEquipment._s2f37,
    (5, 3): GemEquipment._s5f3,
    (5, 5): GemEquipment._s5f5,
}
