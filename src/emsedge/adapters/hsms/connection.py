"""HSMS (SEMI E37, single-session HSMS-SS) on anyio byte streams: framing, control messages, timers.

Frame: a 4-byte big-endian length (of what follows), then a 10-byte header
`session_id(2) | byte2 | byte3 | PType | SType | system_bytes(4)`, then the SECS-II body (data messages).
For data messages byte2 is `W-bit | stream` and byte3 the function. For control messages byte3 carries
the Select/Deselect status or the Reject reason.

Roles: the *active* side opens the TCP connection and sends Select.req; the *passive* side accepts
and waits for it. Either side may be host or equipment; the GEM layers above decide that.

Invariants:

* A frame whose declared length is below 10 ends the connection. A data message whose body exceeds
  `max_message_bytes` is read past without being kept (chunk by chunk) and answered S9F11 (data too
  long), so the session stays up; one that declares more than `DRAIN_FACTOR` times the limit ends the
  connection before a byte of its body is read. Memory held per connection is bounded by
  `max_message_bytes` plus one receive chunk, whatever the peer sends.
* A body is decoded within a `DecodeBudget` (depth, items, bytes; see `secs2.decode`) and, when it is
  longer than `OFFLOAD_BYTES`, in a worker thread, so one large message cannot stall the event loop
  (the other machines' polls) for more than a few milliseconds at a time. Beyond the budget it is
  answered S9F7 like any undecodable body.
* T8 (inter-character) applies once the first byte of a frame has arrived; an idle link has no read
  deadline, silence is detected by the linktest (T6) instead. T7 ends a connection that is not selected
  within T7 of connecting (or of a Deselect). T3 ends the connection when a reply does not arrive.
* An undecodable SECS-II body is answered with S9F7 (MHEAD = its header), logged, and the connection
  keeps working. A data message for another session id is answered with S9F1.
* Primaries are handed to the handler one at a time, in arrival order, by a single dispatcher task;
  replies (and S9/F0 answers to our own requests) go straight to the waiting request. So a slow
  handler (e.g. waiting for the durable buffer) delays later primaries but never our own replies.
* `run()` owns every task it starts; when it returns the stream is closed and every waiting request
  has failed with `HsmsClosed`.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import TaskStatus

from emsedge.adapters.hsms.config import HsmsConnection
from emsedge.adapters.hsms.secs2 import (
    DecodeBudget,
    Item,
    Secs2BudgetExceeded,
    Secs2DecodeError,
    decode,
    encode,
    to_sml,
)

__all__ = [
    "HEADER",
    "HsmsClosed",
    "HsmsError",
    "HsmsLink",
    "Message",
    "RejectReason",
    "SType",
    "TransactionRejected",
    "frame",
]

HEADER: Final = struct.Struct(">IHBBBBI")
"""length, session id, byte2, byte3, PType, SType, system bytes."""

CONTROL_SESSION: Final = 0xFFFF
_CHUNK: Final = 65536
OFFLOAD_BYTES: Final = 64 << 10
"""Bodies longer than this are decoded in a worker thread (a 64 KiB body decodes in about a millisecond)."""
DRAIN_FACTOR: Final = 16
"""An oversized message up to this many times `max_message_bytes` is skipped and answered S9F11; a longer
one is taken for a broken stream (or an attack on the link) and ends the connection."""


class SType(IntEnum):
    DATA = 0
    SELECT_REQ = 1
    SELECT_RSP = 2
    DESELECT_REQ = 3
    DESELECT_RSP = 4
    LINKTEST_REQ = 5
    LINKTEST_RSP = 6
    REJECT_REQ = 7
    SEPARATE_REQ = 9


class RejectReason(IntEnum):
    STYPE_NOT_SUPPORTED = 1
    PTYPE_NOT_SUPPORTED = 2
    TRANSACTION_NOT_OPEN = 3
    ENTITY_NOT_SELECTED = 4


class HsmsError(Exception):
    """Base of HSMS failures."""


class HsmsClosed(HsmsError):
    """The connection ended; `str(exc)` is the reason."""


class TransactionRejected(HsmsError):
    """The peer answered our request with an S9 error, an F0 abort or a Reject.req."""

    def __init__(self, message: str, *, reject_reason: int | None = None) -> None:
        super().__init__(message)
        self.reject_reason = reject_reason
        """The Reject.req reason code when the rejection was an HSMS Reject.req."""


@dataclass(slots=True)
class Message:
    """One SECS-II data message. `header` holds the raw 10 header bytes of a received message (for S9 MHEAD)."""

    stream: int
    function: int
    body: Item | None = None
    wbit: bool = False
    system: int = 0
    session_id: int = 0
    header: bytes = b""
    size: int = 0
    """Bytes of the received body (0 for messages we build): lets handlers move big work off the loop."""

    @property
    def name(self) -> str:
        return f"S{self.stream}F{self.function}"

    def sml(self) -> str:
        head = f"{self.name}{' W' if self.wbit else ''}"
        return head if self.body is None else f"{head}\n{to_sml(self.body)}"


def frame(session_id: int, byte2: int, byte3: int, stype: int, system: int, *, body: bytes = b"") -> bytes:
    return HEADER.pack(10 + len(body), session_id, byte2, byte3, 0, stype, system) + body


@dataclass(slots=True)
class _Pending:
    event: anyio.Event = field(default_factory=anyio.Event)
    message: Message | None = None
    status: int = 0
    error: HsmsError | None = None

    def resolve(self, message: Message | None = None, status: int = 0, error: HsmsError | None = None) -> None:
        self.message, self.status, self.error = message, status, error
        self.event.set()


def _debug_enabled(log: Any) -> bool:
    check = getattr(log, "is_enabled_for", None) or getattr(log, "isEnabledFor", None)
    if check is None:
        return True
    try:
        return bool(check(logging.DEBUG))
    except Exception:  # a logger proxy that cannot answer: assume yes, correctness over speed
        return True


Handler = Callable[["HsmsLink", Message], Awaitable[None]]


class HsmsLink:
    """One HSMS connection over an established byte stream; `run()` serves it until it ends.

    `passive=True` waits for the peer's Select.req; `passive=False` sends it (call `select()` after
    `run()` has started). `handler` receives every primary data message; it replies with `reply()`.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        config: HsmsConnection,
        log: Any,
        handler: Handler,
        *,
        passive: bool,
    ) -> None:
        self._stream = stream
        self.config = config
        self.log = log
        self._handler = handler
        self.passive = passive
        self.session_id = config.session_id
        self.selected = False
        self.answer_linktest = True
        """Simulators set this False to play a peer that went silent (tests of the linktest)."""
        self._selected_event = anyio.Event()
        self._deselected_event = anyio.Event()
        self._pending: dict[int, _Pending] = {}
        self._system = 0
        self._buf = bytearray()
        self._send_lock = anyio.Lock()
        self._closed_reason: str | None = None
        self._scope: anyio.CancelScope | None = None
        self._debug = _debug_enabled(log)
        send, receive = anyio.create_memory_object_stream[Message](64)
        self._primary_send = send
        self._primary_receive = receive

    # ------------------------------------------------------------------------------------------------
    # lifecycle

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> str:
        """Serve the connection until it ends; return why. Connection failures never raise from here."""
        try:
            with self._primary_send, self._primary_receive:
                async with anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    tg.start_soon(self._dispatch_loop)
                    tg.start_soon(self._t7_watch)
                    if self.config.linktest_interval > 0:
                        tg.start_soon(self._linktest_loop)
                    task_status.started()
                    try:
                        await self._read_loop()
                    except HsmsClosed as exc:
                        self.close(str(exc))
                    except TimeoutError:  # before OSError, of which it is a subclass
                        self.close("T8 inter-character timeout")
                    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        self.close("connection closed by peer")
        finally:
            if self._closed_reason is None and self.selected:
                await self._send_separate()  # stopped from outside (shutdown): tell the peer politely
            if self._closed_reason is None:
                self._closed_reason = "connection ended"
            self._fail_pending()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        return self._closed_reason

    def close(self, reason: str) -> None:
        """End the connection (idempotent): fail waiting requests and stop `run()`."""
        if self._closed_reason is None:
            self._closed_reason = reason
            self.log.debug("hsms connection ending", reason=reason)
        self._fail_pending()
        if self._scope is not None:
            self._scope.cancel()

    async def separate(self, reason: str = "separate sent") -> None:
        """Send Separate.req (best effort) and end the connection."""
        await self._send_separate()
        self.close(reason)

    async def _send_separate(self) -> None:
        if self._closed_reason is not None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), contextlib.suppress(HsmsClosed):
            await self._send_raw_frame(frame(CONTROL_SESSION, 0, 0, SType.SEPARATE_REQ, self._next_system()))

    def _fail_pending(self) -> None:
        err = HsmsClosed(self._closed_reason or "connection ended")
        for pending in list(self._pending.values()):
            if not pending.event.is_set():
                pending.resolve(error=err)

    # ------------------------------------------------------------------------------------------------
    # control transactions

    def _next_system(self) -> int:
        self._system = self._system % 0xFFFFFFFF + 1
        return self._system

    async def _control_transaction(self, stype: SType, byte3: int = 0) -> int:
        system = self._next_system()
        pending = _Pending()
        self._pending[system] = pending
        try:
            await self._send_raw_frame(frame(CONTROL_SESSION, 0, byte3, stype, system))
            with anyio.move_on_after(self.config.t6):
                await pending.event.wait()
            if not pending.event.is_set():
                name = stype.name.lower().replace("_", ".")
                self.close(f"T6 timeout waiting for the answer to {name}")
                raise HsmsClosed(self._closed_reason)
        finally:
            self._pending.pop(system, None)
        if pending.error is not None:
            raise pending.error
        return pending.status

    async def select(self) -> None:
        """Active side: Select.req and wait (T6) for Select.rsp status 0; anything else ends the link."""
        status = await self._control_transaction(SType.SELECT_REQ)
        if status != 0:
            self.close(f"select refused with status {status}")
            raise HsmsClosed(self._closed_reason)
        self._mark_selected()
        self.log.debug("hsms selected")

    async def deselect(self) -> None:
        status = await self._control_transaction(SType.DESELECT_REQ)
        if status == 0:
            self._mark_deselected()

    async def linktest(self) -> None:
        await self._control_transaction(SType.LINKTEST_REQ)

    async def wait_selected(self) -> None:
        await self._selected_event.wait()

    def _mark_selected(self) -> None:
        self.selected = True
        self._selected_event.set()
        self._deselected_event = anyio.Event()

    def _mark_deselected(self) -> None:
        self.selected = False
        self.answer_linktest = True
        """Simulators set this False to play a peer that went silent (tests of the linktest)."""
        self._selected_event = anyio.Event()
        self._deselected_event.set()

    async def _t7_watch(self) -> None:
        while True:
            if not self.selected:
                with anyio.move_on_after(self.config.t7):
                    await self._selected_event.wait()
                if not self.selected:
                    self.close("T7 timeout: not selected")
                    return
            await self._deselected_event.wait()

    async def _linktest_loop(self) -> None:
        """A peer that stops answering linktests within T6 is gone even if TCP still looks open."""
        try:
            while True:
                await anyio.sleep(self.config.linktest_interval)
                if self.selected:
                    await self.linktest()
        except TransactionRejected:
            self.close("linktest rejected by peer")
        except HsmsClosed:
            return

    # ------------------------------------------------------------------------------------------------
    # data messages

    async def request(self, message: Message, *, close_on_t3: bool = True) -> Message:
        """Send a primary with the W-bit and return its reply; T3 without reply ends the connection.

        Raises `TransactionRejected` when the peer answers S9Fx, SxF0 or Reject.req (or on T3 when
        `close_on_t3` is false: for optional services some equipment silently ignores), `HsmsClosed`
        when the connection ends first.
        """
        message.wbit = True
        system = self._next_system()
        pending = _Pending()
        self._pending[system] = pending
        try:
            await self._send_data(message, system)
            with anyio.move_on_after(self.config.t3):
                await pending.event.wait()
            if not pending.event.is_set():
                if not close_on_t3:
                    raise TransactionRejected(f"T3 timeout waiting for the reply to {message.name}")
                self.close(f"T3 timeout waiting for the reply to {message.name}")
                raise HsmsClosed(self._closed_reason)
        finally:
            self._pending.pop(system, None)
        if pending.error is not None:
            raise pending.error
        reply = pending.message
        assert reply is not None
        if reply.stream == 9:
            raise TransactionRejected(f"{message.name} answered {reply.name}")
        if reply.function == 0:
            raise TransactionRejected(f"{message.name} aborted by the peer ({reply.name})")
        return reply

    async def send(self, message: Message) -> None:
        """Send a primary without W-bit (no reply expected)."""
        message.wbit = False
        await self._send_data(message, self._next_system())

    async def reply(self, primary: Message, stream: int, function: int, body: Item | None = None) -> None:
        await self._send_data(Message(stream, function, body), primary.system)

    async def send_s9(self, function: int, offending: Message | bytes) -> None:
        """S9Fx error report whose MHEAD is the offending message's 10 header bytes."""
        header = offending.header if isinstance(offending, Message) else offending
        await self.send(Message(9, function, Item("B", header[:10])))

    async def _send_data(self, message: Message, system: int) -> None:
        message.system = system
        message.session_id = self.session_id
        body = encode(message.body) if message.body is not None else b""
        if self._debug:
            self.log.debug("secs send", message=message.sml(), system=system)
        byte2 = (0x80 if message.wbit else 0) | (message.stream & 0x7F)
        await self._send_raw_frame(frame(self.session_id, byte2, message.function & 0xFF, 0, system, body=body))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests and simulators use it to send malformed frames)."""
        await self._send_raw_frame(data)

    async def _send_raw_frame(self, data: bytes) -> None:
        if self._closed_reason is not None:
            raise HsmsClosed(self._closed_reason)
        try:
            async with self._send_lock:
                with anyio.fail_after(self.config.t6):
                    await self._stream.send(data)
        except TimeoutError:
            self.close("send timed out (peer not reading)")
            raise HsmsClosed(self._closed_reason) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.close(f"send failed: {exc or type(exc).__name__}")
            raise HsmsClosed(self._closed_reason) from None

    # ------------------------------------------------------------------------------------------------
    # receiving

    async def _fill(self, size: int) -> None:
        """Read until the buffer holds `size` bytes; T8 applies between chunks once a frame has begun."""
        while len(self._buf) < size:
            if self._buf:
                with anyio.fail_after(self.config.t8):
                    chunk = await self._stream.receive(_CHUNK)
            else:
                chunk = await self._stream.receive(_CHUNK)
            self._buf += chunk

    async def _skip(self, size: int) -> None:
        """Read and forget `size` bytes (T8 between chunks): an oversized body is never held in memory."""
        left = size
        while left:
            if not self._buf:
                with anyio.fail_after(self.config.t8):
                    self._buf += await self._stream.receive(_CHUNK)
            taken = min(left, len(self._buf))
            del self._buf[:taken]
            left -= taken

    async def _read_loop(self) -> None:
        limit = int(self.config.max_message_bytes)
        while True:
            await self._fill(4)
            length = int.from_bytes(self._buf[:4], "big")
            if length < 10:
                raise HsmsClosed(f"broken frame: length {length} is shorter than the 10-byte header")
            if length - 10 > limit:
                if length - 10 > limit * DRAIN_FACTOR:
                    raise HsmsClosed(f"frame of {length} bytes exceeds max_message_bytes {limit}: refused")
                await self._fill(14)
                header = bytes(self._buf[4:14])
                del self._buf[:14]
                await self._skip(length - 10)
                await self._too_long(header, length - 10, limit)
                continue
            await self._fill(4 + length)
            _, _, _, byte3, ptype, stype, system = HEADER.unpack_from(self._buf, 0)
            header = bytes(self._buf[4:14])
            body = bytes(self._buf[14 : 4 + length])
            del self._buf[: 4 + length]
            if ptype != 0:
                await self._reject(header, system, RejectReason.PTYPE_NOT_SUPPORTED, ptype)
            elif stype == SType.DATA:
                await self._on_data(header, body)
            else:
                await self._on_control(stype, byte3, system, header)

    async def reject(self, message: Message, reason: RejectReason) -> None:
        """Answer a received data message with Reject.req (simulators use it to play racy peers)."""
        await self._reject(message.header, message.system, reason, SType.DATA)

    async def _reject(self, header: bytes, system: int, reason: RejectReason, what: int) -> None:
        self.log.warning("hsms reject sent", reason=reason.name.lower(), header=header.hex())
        await self._send_raw_frame(frame(CONTROL_SESSION, what, reason, SType.REJECT_REQ, system))

    async def _on_control(self, stype: int, byte3: int, system: int, header: bytes) -> None:
        if stype == SType.SELECT_REQ:
            status = 1 if self.selected else 0  # 1: communication already active
            await self._send_raw_frame(frame(CONTROL_SESSION, 0, status, SType.SELECT_RSP, system))
            if status == 0:
                self._mark_selected()
                self.log.debug("hsms selected by peer")
        elif stype == SType.DESELECT_REQ:
            await self._send_raw_frame(frame(CONTROL_SESSION, 0, 0, SType.DESELECT_RSP, system))
            self._mark_deselected()
            self.log.info("hsms deselected by peer")
        elif stype == SType.LINKTEST_REQ:
            if not self.answer_linktest:
                return
            await self._send_raw_frame(frame(CONTROL_SESSION, 0, 0, SType.LINKTEST_RSP, system))
        elif stype in (SType.SELECT_RSP, SType.DESELECT_RSP, SType.LINKTEST_RSP):
            pending = self._pending.get(system)
            if pending is None:
                await self._reject(header, system, RejectReason.TRANSACTION_NOT_OPEN, stype)
            else:
                pending.resolve(status=byte3)
        elif stype == SType.REJECT_REQ:
            self.log.warning("hsms reject received", stype=header[2], reason=byte3)
            pending = self._pending.get(system)
            if pending is not None:
                pending.resolve(
                    error=TransactionRejected(f"peer sent Reject.req reason {byte3}", reject_reason=byte3)
                )
        elif stype == SType.SEPARATE_REQ:
            raise HsmsClosed("separate from peer")
        else:
            await self._reject(header, system, RejectReason.STYPE_NOT_SUPPORTED, stype)

    async def _too_long(self, header: bytes, size: int, limit: int) -> None:
        _, byte2, byte3, ptype, stype, system = struct.unpack(">HBBBBI", header)
        name = f"S{byte2 & 0x7F}F{byte3}"
        self.log.warning("message longer than max_message_bytes skipped, answered S9F11",
                         message=name, size=size, max_message_bytes=limit)
        if ptype != 0 or stype != SType.DATA:
            return
        pending = self._pending.get(system) if byte3 % 2 == 0 else None
        if pending is not None:
            pending.resolve(error=TransactionRejected(f"reply {name} of {size} bytes exceeds max_message_bytes"))
        if self.selected:
            await self.send_s9(11, header)

    def _budget(self) -> DecodeBudget:
        return DecodeBudget(max_bytes=int(self.config.max_message_bytes))

    async def _on_data(self, header: bytes, raw: bytes) -> None:
        session, byte2, byte3, _, _, system = struct.unpack(">HBBBBI", header)
        stream, function, wbit = byte2 & 0x7F, byte3, bool(byte2 & 0x80)
        if not self.selected:
            await self._reject(header, system, RejectReason.ENTITY_NOT_SELECTED, SType.DATA)
            return
        try:
            if not raw:
                body = None
            elif len(raw) > OFFLOAD_BYTES:
                body = await anyio.to_thread.run_sync(decode, raw, self._budget())
            else:
                body = decode(raw, self._budget())
        except Secs2DecodeError as exc:
            what = "secs-ii body beyond the decode budget" if isinstance(exc, Secs2BudgetExceeded) \
                else "undecodable secs-ii body"
            self.log.warning(f"{what} answered S9F7", message=f"S{stream}F{function}", error=str(exc))
            pending = self._pending.get(system) if function % 2 == 0 else None
            if pending is not None:
                pending.resolve(error=TransactionRejected(f"undecodable reply S{stream}F{function}: {exc}"))
            await self.send_s9(7, header)
            return
        message = Message(stream, function, body, wbit, system, session, header, len(raw))
        if self._debug:
            self.log.debug("secs recv", message=message.sml(), system=system)
        if session != self.session_id:
            self.log.warning("data message for another session id answered S9F1", session_id=session)
            await self.send_s9(1, header)
            return
        if stream == 9:
            # an error report about one of our messages: MHEAD's system bytes name the transaction
            target = system
            if body is not None and body.fmt == "B" and len(body.value) == 10:
                target = int.from_bytes(body.value[6:10], "big")
            self.log.warning("peer reported an error", message=message.name, about=to_sml(body))
            pending = self._pending.get(target) or self._pending.get(system)
            if pending is not None:
                pending.resolve(message)
                return
            # not about an open transaction: the handler may still want to know (simulators record it)
        elif function == 0 or function % 2 == 0:
            pending = self._pending.get(system)
            if pending is None:
                self.log.warning("reply without an open transaction dropped", message=message.name)
            else:
                pending.resolve(message)
            return
        await self._primary_send.send(message)

    async def _dispatch_loop(self) -> None:
        async for message in self._primary_receive:
            try:
                await self._handler(self, message)
            except HsmsClosed:
                return
