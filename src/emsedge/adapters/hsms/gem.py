"""GEM host layer and the HSMS push adapter: connect, establish, define reports, serve, poll.

One connection's life (`HsmsAdapter._session`):

    select -> S1F13 establish -> S1F1 -> S2F37 disable all -> S2F33 delete all -> S2F33 define
    -> S2F35 link -> S2F37 enable ours -> S5F3 enable alarms -> S2F17 clock -> S1F11 namelist
    -> ctx.connected() -> poll S1F3 every poll_interval, while the dispatcher serves S6F11, S5F1, S10

Invariants:

* Every W-bit primary from the equipment gets an answer: its reply, an ack, or S9F3 (unknown
  stream) / S9F5 (unknown function); structurally wrong bodies get S9F7 (an id sent as a list, a
  missing field), and the session stays up: one odd message never costs the link, so a tool that
  re-sends an unacknowledged report cannot make it flap, and reports queued behind it still arrive.
* S6F12 and S5F2 are sent only after `ctx.emit()` returned, i.e. after the buffer made the records
  durable, never on a timeout: an equipment that spools unacknowledged reports never loses one to a
  gateway crash or a full disk. An emit that fails closes the link without a reply.
* `fault_cleared` carries the `fault_occurrence_id` of the `fault_occurred` for the same ALID while the
  adapter runs (the map of active alarms survives reconnects, not restarts).
* The adapter never writes process data to the equipment; it only configures its own reports.
* T5 is the minimum time between two connect attempts (the supervisor's `min_interval`); backoff may
  make it longer. Reconnects, backoff and connection events are the supervisor's (`emsedge.supervisor`).
* Status variables are polled on the shared poll grid (`emsedge.scheduler.poll_grid`).
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import SocketListener
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.hsms.config import CollectionEvent, HsmsEquipment
from emsedge.adapters.hsms.connection import HsmsClosed, HsmsLink, Message, RejectReason, TransactionRejected
from emsedge.adapters.hsms.secs2 import BOOLEAN, U4, B, Item, L
from emsedge.errors import AdapterError
from emsedge.scheduler import SkipCycle, poll_deadline, poll_grid
from emsedge.schema import EventType, Quality, Record, reading, telemetry, utc_iso

__all__ = ["ALARM_SET", "HsmsAdapter", "alarm_severity", "parse_event_report"]

ALARM_SET: Final = 0x80
_KNOWN_STREAMS: Final = frozenset({1, 2, 5, 6, 7, 9, 10})
_UNIT_EVENTS: Final = frozenset({"unit_inspected", "unit_tested"})
_BATCH_MAX: Final = 1000
_SELECT_RACE_RETRIES: Final = 20  # up to ~10 s: on a loaded machine secsgem records the selection late
_OFFLOAD_BYTES: Final = 64 << 10
"""Event reports longer than this are turned into records in a worker thread (see HsmsLink)."""
_LEFTOVER_DEADLINE: Final = 5.0
"""Bound on handing on the unacknowledged records left when a connection ends (never acknowledged)."""

# SEMI E5 ALCD categories (bits 0-6) -> severity words
_SEVERITY: Final[dict[int, str]] = {
    1: "critical",  # personal safety
    2: "critical",  # equipment safety
    3: "warning",  # parameter control warning
    4: "error",  # parameter control error
    5: "error",  # irrecoverable error
    6: "warning",  # equipment status warning
    7: "info",  # attention flags
    8: "error",  # data integrity
}


def alarm_severity(alcd: int) -> str:
    return _SEVERITY.get(alcd & 0x7F, "error")


@dataclass(slots=True)
class _Delivery:
    """A record waiting for the buffer, and the reply (stream, function) owed once it is durable."""

    record: Record
    message: Message
    reply: tuple[int, int] | None


class MalformedMessage(ValueError):
    """A decodable body that does not have the structure the standard prescribes."""


def scalar_id(item: Item, what: str) -> int | str:
    """An identifier (DATAID, CEID, RPTID, ALID, VID): one integer or a text, never a list or an array."""
    if item.fmt in ("A", "J"):
        text: str = item.value
        return text
    if item.fmt in ("L", "B", "BOOLEAN") or item.fmt.startswith("F") or len(item.value) != 1:
        raise MalformedMessage(f"{what} must be one integer or a text, not {item.fmt}[{len(item.value)}]")
    value: int = item.value[0]
    return value


def parse_event_report(body: Item | None) -> tuple[Any, Any, list[tuple[Any, list[Item]]]]:
    """S6F11 body -> (DATAID, CEID, [(RPTID, [value items])]); raises MalformedMessage on a wrong shape."""
    shape = "S6F11 body is not L[DATAID, CEID, L[L[RPTID, L[V...]]...]]"
    if body is None or body.fmt != "L" or len(body) != 3 or body[2].fmt != "L":
        raise MalformedMessage(shape)
    parsed = []
    for report in body[2].items:
        if report.fmt != "L" or len(report) != 2 or report[1].fmt != "L":
            raise MalformedMessage(shape)
        parsed.append((scalar_id(report[0], "RPTID"), list(report[1].items)))
    return scalar_id(body[0], "DATAID"), scalar_id(body[1], "CEID"), parsed


def _ack(reply: Message) -> int | None:
    """The single ack code of a reply (DRACK, LRACK, ERACK, ACKC5, COMMACK...); None if there is none."""
    body = reply.body
    if body is None:
        return None
    if body.fmt == "L":
        body = body[0] if len(body) else None
    if body is None or body.fmt == "L" or body.is_empty:
        return None
    value = body.value[0]
    return int(value) if isinstance(value, int | bool) else None


class HsmsAdapter:
    """SECS/GEM host for one piece of equipment (PushAdapter)."""

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx
        self.config = cast(HsmsEquipment, ctx.equipment)
        self.log = ctx.log
        self._events: dict[Any, CollectionEvent] = {ev.ceid: ev for ev in self.config.events}
        self._report_names: dict[Any, list[str]] = {
            r.rptid: list(r.names) if r.names else [f"vid_{v}" for v in r.vids] for r in self.config.reports
        }
        self._active_alarms: dict[Any, str] = {}
        self._units: dict[int, str | None] = {sv.svid: sv.unit for sv in self.config.status_variables}
        self._dataid = 0
        self.event_reports = 0
        self._deliveries: MemoryObjectSendStream[_Delivery] | None = None
        self._refused: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------------------------------------
    # lifecycle

    async def session(self, ctx: AdapterContext) -> None:
        """One connection (connect or accept, establish, serve); raises `AdapterError` when it ends.

        The supervisor spaces attempts by at least T5 and backs off; see `emsedge.supervisor`.
        """
        raise AdapterError(await self._connect_once())

    def endpoint(self) -> tuple[str, int] | None:
        """`HasEndpoint`: the equipment's port in active mode (probed while it refuses); None when passive."""
        conn = self.config.connection
        return (conn.host, conn.port) if conn.mode == "active" else None

    def offline_records(self, reason: str) -> Sequence[Record]:
        """Bad-quality readings for every status variable, emitted with connection_lost."""
        if not self.config.status_variables:
            return []
        ts = utc_iso()
        readings = [
            reading(sv.name, None, unit=self._units.get(sv.svid), quality=Quality.BAD, ts=ts)
            for sv in self.config.status_variables
        ]
        return [telemetry(self.config.id, self.config.type, readings, ts)]

    async def _connect_once(self) -> str:
        conn = self.config.connection
        if conn.mode == "active":
            try:
                with anyio.fail_after(conn.t6):
                    stream: anyio.abc.ByteStream = await anyio.connect_tcp(conn.host, conn.port)
            except TimeoutError:
                raise AdapterError(f"connect to {conn.host}:{conn.port} timed out", unreachable=True) from None
            except OSError as exc:
                raise AdapterError(
                    f"connect to {conn.host}:{conn.port} failed: {exc.strerror or exc}",
                    unreachable=not isinstance(exc, socket.gaierror),  # a name that does not resolve: config/DNS
                ) from None
            return await self._session(stream, passive=False)
        try:
            listener = await anyio.create_tcp_listener(local_host=conn.host, local_port=conn.port, reuse_port=False)
        except OSError as exc:
            return f"cannot listen on {conn.host}:{conn.port}: {exc.strerror or exc}"
        async with listener:
            self.log.debug("hsms waiting for the equipment to connect", port=conn.port)
            stream = await cast(SocketListener, listener.listeners[0]).accept()
        return await self._session(stream, passive=True)

    async def _session(self, stream: anyio.abc.ByteStream, *, passive: bool) -> str:
        link = HsmsLink(stream, self.config.connection, self.log, self._on_primary, passive=passive)
        send, receive = anyio.create_memory_object_stream[_Delivery](_BATCH_MAX)
        self._deliveries = send
        with send, receive:
            return await self._serve_session(link, receive, passive=passive)

    async def _serve_session(
        self, link: HsmsLink, receive: MemoryObjectReceiveStream[_Delivery], *, passive: bool
    ) -> str:
        async with anyio.create_task_group() as tg:

            async def serve_link() -> None:
                await link.run()
                tg.cancel_scope.cancel()

            tg.start_soon(self._deliver_loop, link, receive)
            tg.start_soon(serve_link)
            try:
                if passive:
                    await link.wait_selected()
                else:
                    await link.select()
                await self._establish(link)
                await self.ctx.connected()
                await self._poll_loop(link)
            except HsmsClosed:
                pass
            except TransactionRejected as exc:
                link.close(f"establishing communication failed: {exc}")
        return link.closed_reason or "connection ended"

    # ------------------------------------------------------------------------------------------------
    # establishing

    def _next_dataid(self) -> int:
        self._dataid = self._dataid % 0xFFFFFFFF + 1
        return self._dataid

    async def _checked(
        self, link: HsmsLink, message: Message, what: str, *, close_on_t3: bool = True
    ) -> Message | None:
        """Request whose non-zero ack is logged, not fatal: a host cannot fix the equipment's config."""
        try:
            reply = await link.request(message, close_on_t3=close_on_t3)
        except TransactionRejected as exc:
            self.log.warning(f"{what} rejected", error=str(exc))
            return None
        ack = _ack(reply)
        if ack not in (0, None):
            self.log.warning(f"{what} refused", ack=ack)
        return reply

    async def _establish(self, link: HsmsLink) -> None:
        reply = await self._establish_communication(link)
        commack = _ack(reply)
        if commack not in (0, None):
            raise TransactionRejected(f"S1F13 denied with COMMACK {commack}")
        body = reply.body
        model = body[1].to_python() if body is not None and body.fmt == "L" and len(body) > 1 else []
        self.log.info("communication established", model=model)
        await self._checked(link, Message(1, 1), "S1F1 are-you-there", close_on_t3=False)

        ceids = [U4(ev.ceid) for ev in self.config.events]
        await self._checked(link, Message(2, 37, L(BOOLEAN(False), L())), "S2F37 disable all events")
        await self._checked(link, Message(2, 33, L(U4(self._next_dataid()), L())), "S2F33 delete all reports")
        if self.config.reports:
            definitions = [L(U4(r.rptid), L(*[U4(v) for v in r.vids])) for r in self.config.reports]
            await self._checked(link, Message(2, 33, L(U4(self._next_dataid()), L(*definitions))), "S2F33 define")
        links = [L(U4(ev.ceid), L(*[U4(r) for r in ev.reports])) for ev in self.config.events if ev.reports]
        if links:
            await self._checked(link, Message(2, 35, L(U4(self._next_dataid()), L(*links))), "S2F35 link reports")
        if ceids:
            await self._checked(link, Message(2, 37, L(BOOLEAN(True), L(*ceids))), "S2F37 enable events")
        await self._enable_alarms(link)
        await self._read_clock(link)
        await self._read_namelist(link)

    async def _establish_communication(self, link: HsmsLink) -> Message:
        """S1F13, retried briefly while the peer still rejects it as "not selected".

        secsgem 0.3.0 sends its Select.rsp before it records the selection (threads), so a fast host's
        first S1F13 can meet a Reject.req reason 4; dropping the connection then can wedge its server.
        """
        attempt = 0
        while True:
            try:
                return await link.request(Message(1, 13, L()))
            except TransactionRejected as exc:
                attempt += 1
                if exc.reject_reason != RejectReason.ENTITY_NOT_SELECTED or attempt >= _SELECT_RACE_RETRIES:
                    raise
                await anyio.sleep(0.05 * attempt)

    async def _enable_alarms(self, link: HsmsLink) -> None:
        alarms = self.config.alarms
        alids: list[Any] = list(alarms.ids)
        if alarms.enable_all:
            try:
                reply = await link.request(Message(5, 3, L(B(ALARM_SET), U4())))
                if _ack(reply) == 0:
                    return
            except TransactionRejected:
                pass  # some equipment (secsgem) refuses the empty "all alarms" ALID: enable one by one
            alids = []
            # E5 says S5F5 carries an ALID vector (U4[0] = all); secsgem wants a list (L[0]): try both
            for request_body in (L(), U4()):
                try:
                    listing = await link.request(Message(5, 5, request_body), close_on_t3=False)
                    alids = [entry[1].to_python() for entry in (listing.body.items if listing.body else ())]
                    break
                except (TransactionRejected, TypeError, IndexError) as exc:
                    self.log.debug("alarm list request failed", error=str(exc))
            if not alids:
                self.log.warning("cannot list the equipment's alarms to enable them")
                return
        for alid in alids:
            alid_item = U4(alid) if isinstance(alid, int) else Item("A", str(alid))
            await self._checked(link, Message(5, 3, L(B(ALARM_SET), alid_item)), f"S5F3 enable alarm {alid}")

    async def _read_clock(self, link: HsmsLink) -> None:
        try:
            reply = await link.request(Message(2, 17), close_on_t3=False)
        except TransactionRejected as exc:
            self.log.debug("equipment has no clock service", error=str(exc))
            return
        text = reply.body.to_python() if reply.body is not None else None
        equipment_time = _parse_secs_time(text) if isinstance(text, str) else None
        if equipment_time is None:
            self.log.info("equipment clock", time=text)
        else:
            self.log.info("equipment clock", time=text, offset_s=round(equipment_time - time.time(), 3))

    async def _read_namelist(self, link: HsmsLink) -> None:
        svs = self.config.status_variables
        if not svs:
            return
        try:
            reply = await link.request(Message(1, 11, L(*[U4(sv.svid) for sv in svs])), close_on_t3=False)
            entries = reply.body.items if reply.body is not None else ()
            for sv, entry in zip(svs, entries, strict=False):
                name, units = entry[1].to_python(), entry[2].to_python()
                if not name:
                    self.log.warning("equipment does not know this status variable", svid=sv.svid, signal=sv.name)
                if self._units.get(sv.svid) is None and units:
                    self._units[sv.svid] = str(units)
        except (TransactionRejected, TypeError, IndexError) as exc:
            self.log.debug("no status variable namelist", error=str(exc))

    # ------------------------------------------------------------------------------------------------
    # polling

    async def _poll_loop(self, link: HsmsLink) -> None:
        """S1F3 on the shared poll grid (`emsedge.scheduler`); a rejected S1F3 skips one cycle."""
        svs = self.config.status_variables
        if not svs:
            await anyio.sleep_forever()
        request_body = L(*[U4(sv.svid) for sv in svs])
        failing = False

        async def poll() -> Sequence[Record]:
            nonlocal failing
            try:
                reply = await link.request(Message(1, 3, request_body))
            except TransactionRejected as exc:
                if not failing:
                    self.log.warning("status variable poll rejected", error=str(exc))
                failing = True
                raise SkipCycle(str(exc)) from None
            failing = False
            items = reply.body.items if reply.body is not None and reply.body.fmt == "L" else ()
            ts = utc_iso()
            readings = []
            for i, sv in enumerate(svs):
                item = items[i] if i < len(items) else None
                unit = self._units.get(sv.svid)
                if item is None or item.is_empty:
                    readings.append(reading(sv.name, None, unit=unit, quality=Quality.BAD, ts=ts))
                else:
                    readings.append(reading(sv.name, item.to_python(), unit=unit, ts=ts))
            return [telemetry(self.config.id, self.config.type, readings, ts)]

        interval = float(self.config.poll_interval)
        await poll_grid(poll, self.ctx, interval, poll_deadline(self, self.ctx, interval))

    @property
    def poll_deadline(self) -> float:
        """Backstop for one S1F3: past T3, so the link's own T3 handling (close) comes first."""
        return float(self.config.connection.t3) + 1.0

    # ------------------------------------------------------------------------------------------------
    # primaries from the equipment

    async def _on_primary(self, link: HsmsLink, msg: Message) -> None:
        key = (msg.stream, msg.function)
        try:
            if key == (6, 11):
                await self._on_event_report(link, msg)
            elif key == (5, 1):
                await self._on_alarm(link, msg)
            elif key in ((10, 1), (10, 5)):
                body = msg.body
                text = body[1].to_python() if body is not None and body.fmt == "L" and len(body) > 1 else None
                self.log.info("terminal message from equipment", text=text)
                await self._ack_if_wanted(link, msg, B(0))
            elif key == (1, 1):
                await self._ack_if_wanted(link, msg, L())
            elif key == (1, 13):
                await self._ack_if_wanted(link, msg, L(B(0), L()))
            elif key in ((6, 1), (6, 13), (5, 9), (6, 5)):
                self.log.debug("equipment message acknowledged without processing", message=msg.name)
                await self._ack_if_wanted(link, msg, None if key == (5, 9) else B(0))
            elif msg.wbit:
                function = 5 if msg.stream in _KNOWN_STREAMS else 3
                self.log.info("unhandled primary answered", message=msg.name, answer=f"S9F{function}")
                await link.send_s9(function, msg)
            else:
                self.log.debug("unhandled primary ignored", message=msg.name)
        except MalformedMessage as exc:
            self._log_refused(msg, str(exc))
            await link.send_s9(7, msg)
        except (HsmsClosed, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            # a shape no check above foresaw: the message is refused, the session (and every report
            # queued behind this one) goes on; the traceback is for the bug report
            self.log.exception("message could not be processed, answered S9F7", message=msg.name, error=repr(exc))
            await link.send_s9(7, msg)

    def _log_refused(self, msg: Message, error: str) -> None:
        """Warn once per kind of malformed message; a tool re-sending the same one is logged at debug."""
        key = (msg.name, error)
        if key in self._refused:
            self.log.debug("malformed message answered S9F7", message=msg.name, error=error)
            return
        if len(self._refused) >= 256:
            self._refused.clear()
        self._refused.add(key)
        self.log.warning("malformed message answered S9F7 (repeats logged at debug)", message=msg.name, error=error)

    @staticmethod
    async def _ack_if_wanted(link: HsmsLink, msg: Message, body: Item | None) -> None:
        if msg.wbit:
            await link.reply(msg, msg.stream, msg.function + 1, body)

    async def _on_event_report(self, link: HsmsLink, msg: Message) -> None:
        if msg.size > _OFFLOAD_BYTES:
            record = await anyio.to_thread.run_sync(self._event_report_record, msg)
        else:
            record = self._event_report_record(msg)
        await self._deliver(_Delivery(record, msg, (6, 12) if msg.wbit else None))
        self.event_reports += 1

    def _event_report_record(self, msg: Message) -> Record:
        _dataid, ceid, reports = parse_event_report(msg.body)
        values: dict[str, Any] = {}
        for rptid, items in reports:
            names = self._report_names.get(rptid)
            for i, item in enumerate(items):
                name = names[i] if names is not None and i < len(names) else f"rpt{rptid}_{i}"
                values[name] = item.to_python()
        return self._event_record(ceid, values)

    def _event_record(self, ceid: Any, values: dict[str, Any]) -> Record:
        config = self._events.get(ceid)
        if config is None:
            self.log.debug("event report for an unconfigured CEID", ceid=ceid)
            return self.ctx.event(EventType.COLLECTION_EVENT, ceid=ceid, values=values)
        if config.emit is None:
            ts = utc_iso()
            readings = [reading(name, value, ts=ts) for name, value in values.items()]
            return telemetry(self.config.id, self.config.type, readings, ts)
        fields: dict[str, Any] = {"ceid": ceid, "name": config.name, "values": values}
        if config.emit in _UNIT_EVENTS:
            if config.serial is not None:
                fields["serial"] = values.get(config.serial)
            raw = values.get(config.result) if config.result is not None else None
            if config.result is not None:
                fields["result"] = "pass" if _is_pass(raw, config.pass_values) else "fail"
                fields["raw_result"] = raw
            # `defects` is always present: the list when a report value carries it, else null (unknown),
            # never an empty list that would claim a clean board; a plain count travels as defect_count
            defects = values.get(config.defects) if config.defects is not None else None
            if defects is not None and not isinstance(defects, list):
                defects = [defects]
            fields["defects"] = defects
            if "defect_count" in values:
                fields["defect_count"] = values["defect_count"]
        return self.ctx.event(config.emit, **fields)

    async def _on_alarm(self, link: HsmsLink, msg: Message) -> None:
        body = msg.body
        if body is None or body.fmt != "L" or len(body) != 3 or body[0].fmt not in ("B", "U1") or body[0].is_empty:
            raise MalformedMessage("S5F1 body is not L[ALCD, ALID, ALTX]")
        alcd = int(body[0].value[0])
        alid, altx = scalar_id(body[1], "ALID"), body[2].to_python()
        fields = {"alid": alid, "altx": altx, "alcd": alcd, "severity": alarm_severity(alcd)}
        if alcd & ALARM_SET:
            occurrence = str(uuid.uuid4())
            self._active_alarms[alid] = occurrence
            record = self.ctx.event(EventType.FAULT_OCCURRED, fault_occurrence_id=occurrence, **fields)
        else:
            occurrence = self._active_alarms.pop(alid, "") or str(uuid.uuid4())
            record = self.ctx.event(EventType.FAULT_CLEARED, fault_occurrence_id=occurrence, **fields)
        # S5F1 is always answered: E5 requires the W-bit on it, but some equipment (secsgem 0.3.0)
        # sends it without one and still waits T3 for the S5F2.
        await self._deliver(_Delivery(record, msg, (5, 2)))

    async def _deliver(self, delivery: _Delivery) -> None:
        if self._deliveries is None:
            raise RuntimeError("no HSMS session is running")
        await self._deliveries.send(delivery)

    async def _deliver_loop(self, link: HsmsLink, receive: MemoryObjectReceiveStream[_Delivery]) -> None:
        """Emit queued event and alarm records in batches, then acknowledge each one, in arrival order.

        Batching is what lets an equipment with several open S6F11 transactions go faster than one
        buffer commit per report. Durable acknowledgement only: S6F12/S5F2 go out after `ctx.emit()`
        returned, with no deadline around the emit (a full disk may hold it for minutes; the equipment
        waits, or gives up at its T3 and re-sends). If the emit fails, the link is closed without a reply
        so the equipment keeps and re-sends the report. Records still queued when the connection ends
        are handed on unacknowledged (the equipment may re-send them: a duplicate beats a loss).
        """
        batch: list[_Delivery] = []
        try:
            with receive:
                async for first in receive:
                    batch = [first]
                    while len(batch) < _BATCH_MAX:
                        try:
                            batch.append(receive.receive_nowait())
                        except anyio.WouldBlock:
                            break
                    try:
                        await self.ctx.emit([d.record for d in batch])
                    except Exception as exc:
                        link.close(f"cannot make {len(batch)} report(s) durable, not acknowledged: {exc}")
                        batch = []
                        return
                    emitted, batch = batch, []
                    for delivery in emitted:
                        if delivery.reply is not None:
                            await link.reply(delivery.message, *delivery.reply, B(0))
        except HsmsClosed:
            pass
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_LEFTOVER_DEADLINE):
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                if batch:
                    with contextlib.suppress(Exception):
                        await self.ctx.emit([d.record for d in batch])


def _is_pass(raw: Any, pass_values: Sequence[Any]) -> bool:
    if isinstance(raw, str):
        raw = raw.strip()
    return raw in pass_values


def _parse_secs_time(text: str) -> float | None:
    """SEMI E5 TIME: 12 chars YYMMDDhhmmss, 16 chars YYYYMMDDhhmmsscc, or ISO 8601. Local time is assumed UTC."""
    try:
        if len(text) == 16 and text.isdigit():
            return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp() + int(text[14:]) / 100
        if len(text) == 12 and text.isdigit():
            return datetime.strptime(text, "%y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
        parsed = datetime.fromisoformat(text)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    except ValueError:
        return None
