"""Modbus TCP adapter: the fewest read requests per poll, whole-block decoding, one telemetry record.

Why it is shaped this way:

* **Request planning** (`plan_requests`, pure): per table, signals sorted by address are packed
  greedily into contiguous reads of at most `max_registers_per_read` registers (`max_bits_per_read`
  bits for coils/discrete inputs); unused gaps of up to `max_gap` registers (`16 * max_gap` bits) are
  read through rather than split, because one extra request costs far more than a few spare registers.
  A signal wider than the cap (a long string with a small cap) gets a read of its own.
* **Decoding** is compiled once, at construction (`compile_block`). Per poll a block is two byte
  strings: the answer's raw bytes as sent (kept by `emsedge.compat.tolerant_responses`) and, only when a signal
  needs it, the same with the two bytes of every register swapped.
  Every byte/word order is then one of four (variant, struct endianness) pairs:

  ========== ========== ============================ =========
  word_order byte_order bytes of registers R0=AB R1=CD variant/endianness
  ========== ========== ============================ =========
  big        big        ABCD                         as sent, ``>``
  little     little     DCBA                         as sent, ``<``
  big        little     BADC                         swapped, ``>``
  little     big        CDAB                         swapped, ``<``
  ========== ========== ============================ =========

  Signals sharing a pair are decoded by a single precompiled `struct.Struct` (pad bytes for gaps),
  so a block of 60 floats is one C call. Overlapping signals go to extra "lanes". Only values that
  need it get Python post-processing (scale/offset, bit extraction, string clean-up, NaN/inf check).
* **Hot path invariants**: no model object, no dict and no log line per reading: a poll is decoded into
  one column of values (`PollValues`) and, when every reading is good, leaves as `schema.PollReadings`
  (reading dicts are built only if something reads them; a poll with a bad reading leaves as dicts);
  one `ts` per poll (the moment the poll started); readings come out in config order; ints stay ints when scale == 1 and
  offset == 0; NaN/inf become `value: None, quality: bad` (JSON cannot carry them).
* **Errors**: a Modbus exception response for one block marks only that block's readings bad (with
  `status` naming the exception, e.g. IllegalDataAddress); a timeout or a lost connection raises
  `AdapterError(transient=True)` so the scheduler emits `connection_lost` and reconnects with backoff.
* **Answers are validated per block** (`answer_problem`) before a byte is decoded: the function code
  must be the request's, the byte count must match the data and the data must hold exactly what was
  asked. A malformed answer marks that block's readings bad with a precise status (`WrongFunction`,
  `WrongByteCount`, `ShortResponse`) and never takes the machine offline: the other blocks stay good.
  The read responses registered on our client (`emsedge.compat.tolerant_responses`) never raise while decoding,
  because pymodbus turns a decoding error into a dropped frame, i.e. a timeout and a reconnect.
  pymodbus' own reconnect and retries are switched off: the scheduler owns the retry policy.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import anyio

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.modbus.config import ModbusConnection, ModbusEquipment, ModbusSignal
from emsedge.compat import tolerant_responses
from emsedge.errors import AdapterError
from emsedge.schema import PollReadings, Record, telemetry, utc_iso

Table = Literal["holding", "input", "coil", "discrete"]
TABLES: tuple[Table, ...] = ("holding", "input", "coil", "discrete")
BIT_TABLES = frozenset(("coil", "discrete"))

EXCEPTION_NAMES: dict[int, str] = {
    1: "IllegalFunction",
    2: "IllegalDataAddress",
    3: "IllegalDataValue",
    4: "ServerDeviceFailure",
    5: "Acknowledge",
    6: "ServerDeviceBusy",
    7: "NegativeAcknowledge",
    8: "MemoryParityError",
    10: "GatewayPathUnavailable",
    11: "GatewayTargetDeviceFailedToRespond",
}

_STRUCT_CHAR: dict[str, str] = {
    "int16": "h", "uint16": "H", "bool": "H", "int32": "i", "uint32": "I",
    "int64": "q", "uint64": "Q", "float32": "f", "float64": "d",
}  # fmt: skip

FUNCTION_CODES: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

_BAD = object()
"""Sentinel returned by a post-processor for a value JSON cannot carry (NaN, inf)."""

# ---------------------------------------------------------------------------------------------------
# Request planning


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers (or bits) from `address` of `table`, serving `signals`."""

    table: Table
    address: int
    count: int
    signals: tuple[int, ...]  # indices into the equipment's signal list, in address order


def signal_width(signal: ModbusSignal) -> int:
    """Registers (or bits, for coil/discrete) the signal occupies."""
    return 1 if signal.table in BIT_TABLES else signal.register_count


def plan_requests(
    signals: Sequence[ModbusSignal],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap: int = 8,
) -> list[ReadRequest]:
    """Group signals into the fewest contiguous reads per table (greedy left to right, which is
    optimal for intervals under a length cap). Tables come out in the order holding, input, coil,
    discrete; requests within a table by address."""
    out: list[ReadRequest] = []
    for table in TABLES:
        is_bits = table in BIT_TABLES
        cap = max_bits if is_bits else max_registers
        gap = max_gap * 16 if is_bits else max_gap
        members = sorted(
            (i for i, s in enumerate(signals) if s.table == table),
            key=lambda i: (signals[i].address, -signal_width(signals[i])),
        )
        start = end = -1
        current: list[int] = []
        for i in members:
            s = signals[i]
            s_end = s.address + signal_width(s)
            if current and s.address - end <= gap and max(end, s_end) - start <= cap:
                end = max(end, s_end)
                current.append(i)
                continue
            if current:
                out.append(ReadRequest(table, start, end - start, tuple(current)))
            start, end, current = s.address, s_end, [i]
        if current:
            out.append(ReadRequest(table, start, end - start, tuple(current)))
    return out


# ---------------------------------------------------------------------------------------------------
# Decoding


def _finite(v: float) -> object:
    return v if v - v == 0.0 else _BAD


def _all_finite(values: tuple[Any, ...]) -> bool:
    """True when no float among `values` is NaN or infinite (a sum of finite numbers that overflows says
    False: the caller then checks one by one)."""
    try:
        total = sum(values)
    except TypeError:  # bytes (strings) in the lane
        return False
    return bool(total - total == 0)


def _post_processor(signal: ModbusSignal) -> Callable[[Any], object] | None:
    """The per-value fix-up after struct unpacking, or None when the raw value is already final."""
    scale, offset = signal.scale, signal.offset
    scaled = scale != 1.0 or offset != 0.0
    t = signal.type
    if t == "bool":
        if signal.table in BIT_TABLES:
            return None
        bit = signal.bit or 0
        return lambda v: bool((v >> bit) & 1)
    if t == "string":
        return lambda v: v.rstrip(b"\x00 ").lstrip(b"\x00 ").decode("utf-8", "replace")
    if t in ("float32", "float64"):
        if scaled:
            return lambda v: _finite(v * scale + offset)
        return _finite
    if scaled:
        return lambda v: v * scale + offset
    return None


@dataclass(frozen=True, slots=True)
class _Lane:
    """Non-overlapping signals of one block decoded by one struct call."""

    swapped: bool
    unpack_from: Callable[[bytes], tuple[Any, ...]]
    indices: tuple[int, ...]  # signal indices, in the order the struct yields them
    posts: tuple[tuple[int, Callable[[Any], object]], ...]  # (position in lane, fix-up)
    first: int
    """indices[0] when the indices are consecutive (the usual case: one lane per block, signals in address
    order), so the values go into the poll's column as one slice; -1 otherwise."""
    finite_only: bool
    """Every fix-up is the NaN/inf check: one sum over the values stands for all of them while they are finite."""


@dataclass(frozen=True, slots=True)
class CompiledBlock:
    """A read request plus everything needed to decode its answer without further lookups."""

    request: ReadRequest
    lanes: tuple[_Lane, ...]
    need_swapped: bool
    pack_format: str  # ">{count}H" for register blocks
    bit_meta: tuple[tuple[int, int], ...]  # coil/discrete: (signal index, bit offset in the answer)


def _lane_key(signal: ModbusSignal) -> tuple[bool, str]:
    """(use byte-swapped buffer, struct endianness) for a register signal; see the module docstring."""
    little_bytes = signal.byte_order == "little"
    if signal.type == "string":
        return little_bytes, ">"
    if signal.register_count == 1:
        return False, "<" if little_bytes else ">"
    little_words = signal.word_order == "little"
    if little_words == little_bytes:
        return False, "<" if little_words else ">"
    return True, "<" if little_words else ">"


def compile_block(request: ReadRequest, signals: Sequence[ModbusSignal]) -> CompiledBlock:
    """Precompile the decoder of one block (see the module docstring)."""
    if request.table in BIT_TABLES:
        bit_meta = tuple((i, signals[i].address - request.address) for i in request.signals)
        return CompiledBlock(request, (), False, "", bit_meta)
    groups: dict[tuple[bool, str], list[list[int]]] = {}
    for i in sorted(request.signals, key=lambda i: signals[i].address):
        lanes = groups.setdefault(_lane_key(signals[i]), [])
        for lane in lanes:  # first lane whose last signal ends before this one starts
            last = signals[lane[-1]]
            if last.address + last.register_count <= signals[i].address:
                lane.append(i)
                break
        else:
            lanes.append([i])
    compiled: list[_Lane] = []
    for (swapped, endian), lanes in groups.items():
        for lane in lanes:
            fmt = [endian]
            pos = request.address
            posts: list[tuple[int, Callable[[Any], object]]] = []
            for n, i in enumerate(lane):
                s = signals[i]
                if s.address > pos:
                    fmt.append(f"{(s.address - pos) * 2}x")
                fmt.append(f"{s.register_count * 2}s" if s.type == "string" else _STRUCT_CHAR[s.type])
                pos = s.address + s.register_count
                if (post := _post_processor(s)) is not None:
                    posts.append((n, post))
            consecutive = lane == list(range(lane[0], lane[0] + len(lane)))
            compiled.append(
                _Lane(
                    swapped,
                    struct.Struct("".join(fmt)).unpack_from,
                    tuple(lane),
                    tuple(posts),
                    lane[0] if consecutive else -1,
                    all(post is _finite for _, post in posts),
                )
            )
    return CompiledBlock(
        request, tuple(compiled), any(lane.swapped for lane in compiled), f">{request.count}H", ()
    )


@dataclass(slots=True)
class PollValues:
    """One poll being decoded: every signal's value in config order and, for the readings that are not plain
    good ones, what differs (quality, status; their value is None)."""

    values: list[Any]
    differs: dict[int, dict[str, Any]] = field(default_factory=dict)


class ModbusDecoder:
    """All blocks of one equipment, precompiled; turns read results into the readings of a poll, in config
    order: values first, as columns (`PollValues`), reading dicts only for a poll with a bad reading."""

    def __init__(
        self,
        signals: Sequence[ModbusSignal],
        *,
        max_registers: int = 125,
        max_bits: int = 2000,
        max_gap: int = 8,
    ) -> None:
        self.signals = list(signals)
        self.requests = plan_requests(signals, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap)
        self.blocks = [compile_block(r, self.signals) for r in self.requests]
        self.names = tuple(s.name for s in self.signals)
        self.units = tuple(s.unit for s in self.signals)

    def new_poll(self) -> PollValues:
        return PollValues([None] * len(self.signals))

    def readings(self, poll: PollValues, ts: str) -> Sequence[dict[str, Any]]:
        """The readings of a decoded poll: `PollReadings` (columns; dicts only when someone reads them) when
        every reading is good, else the reading dicts with the bad ones marked."""
        if not poll.differs:
            return PollReadings(self.names, self.units, poll.values, ts)
        readings = [{"signal": n, "value": v, "unit": u, "quality": "good", "ts": ts}
                    for n, u, v in zip(self.names, self.units, poll.values, strict=True)]
        for i, differs in poll.differs.items():
            readings[i].update(differs)
        return readings

    def decode_registers(self, block: CompiledBlock, registers: Sequence[int] | bytes, poll: PollValues) -> None:
        """Decode one register block (register values, or the raw big-endian bytes of the answer)
        into `poll.values[signal index]`."""
        fmt = block.pack_format
        if isinstance(registers, bytes):
            buf = registers
            if block.need_swapped:
                swapped = struct.pack("<" + fmt[1:], *struct.unpack(fmt, buf))
        else:
            buf = struct.pack(fmt, *registers)
            if block.need_swapped:
                swapped = struct.pack("<" + fmt[1:], *registers)
        if not block.need_swapped:
            swapped = buf
        out = poll.values
        for lane in block.lanes:
            values = lane.unpack_from(swapped if lane.swapped else buf)
            bad: list[int] | None = None
            if lane.posts and not (lane.finite_only and _all_finite(values)):
                values = list(values)  # type: ignore[assignment]
                for n, post in lane.posts:
                    v = post(values[n])
                    if v is _BAD:
                        v = None
                        bad = [*(bad or []), n]
                    values[n] = v  # type: ignore[index]
            if lane.first >= 0:
                out[lane.first : lane.first + len(values)] = values
            else:
                for i, v in zip(lane.indices, values, strict=True):
                    out[i] = v
            for n in bad or ():
                index = lane.first + n if lane.first >= 0 else lane.indices[n]
                poll.differs[index] = {"quality": "bad", "status": "NotFinite"}

    def decode_bits(self, block: CompiledBlock, bits: Sequence[bool], poll: PollValues) -> None:
        out = poll.values
        for i, pos in block.bit_meta:
            out[i] = bool(bits[pos])

    def decode_answer(self, block: CompiledBlock, rr: Any, poll: PollValues) -> str | None:
        """Validate one block's answer (`answer_problem`) and decode it, or mark the block bad; the problem."""
        problem = answer_problem(block.request, rr)
        if problem is not None:
            self.mark_bad(block, problem, poll)
        elif block.bit_meta:
            self.decode_bits(block, rr.bits, poll)
        else:
            self.decode_registers(block, rr.raw, poll)
        return problem

    def mark_bad(self, block: CompiledBlock, status: str, poll: PollValues) -> None:
        for i in block.request.signals:
            poll.values[i] = None
            poll.differs[i] = {"quality": "bad", "status": status}

    def all_bad(self, status: str, ts: str) -> list[dict[str, Any]]:
        return [
            {"signal": n, "value": None, "unit": u, "quality": "bad", "ts": ts, "status": status}
            for n, u in zip(self.names, self.units, strict=True)
        ]


# ---------------------------------------------------------------------------------------------------
# The adapter


def answer_problem(request: ReadRequest, rr: Any) -> str | None:
    """Why an answer to `request` cannot be decoded (a reading status), or None when it is sound.

    Checked in this order: function code (an exception response must be for our function too), the
    declared byte count against the bytes that came, then the bytes against what was asked.
    """
    expected = FUNCTION_CODES[request.table]
    code = getattr(rr, "function_code", None)
    if not isinstance(code, int) or code & 0x7F != expected:
        return "WrongFunction"
    if rr.isError():
        return _exception_status(rr)
    raw = getattr(rr, "raw", None)
    if not isinstance(raw, bytes):
        return "MalformedResponse"
    if getattr(rr, "byte_count", len(raw)) != len(raw):
        return "WrongByteCount"
    need = (request.count + 7) // 8 if request.table in BIT_TABLES else request.count * 2
    if len(raw) < need:
        return "ShortResponse"
    if len(raw) > need:
        return "WrongByteCount"
    return None


def _new_client(conn: ModbusConnection) -> Any:
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415 - keep `import emsedge` light

    # reconnect_delay=0 and retries=0: the scheduler owns reconnects and backoff, not pymodbus.
    client = AsyncModbusTcpClient(
        conn.host, port=conn.port, timeout=conn.timeout, retries=0, reconnect_delay=0, name="emsedge"
    )
    for response in tolerant_responses():
        client.register(response)
    return client


def _exception_status(rr: Any) -> str:
    code = getattr(rr, "exception_code", None)
    if isinstance(code, int):
        return EXCEPTION_NAMES.get(code, f"ModbusException{code}")
    return "ModbusError"


class ModbusAdapter:
    """Polled adapter for one Modbus TCP server (see the module docstring).

    Lifecycle: `async with adapter:` connects; `poll()` reads every block once and returns one telemetry
    record; leaving closes the socket. The scheduler enters it again after a transient error.
    """

    def __init__(self, ctx: AdapterContext) -> None:
        equipment = ctx.equipment
        if not isinstance(equipment, ModbusEquipment):
            raise AdapterError(f"{equipment.id}: not a Modbus equipment config", transient=False)
        self.ctx = ctx
        self.equipment: ModbusEquipment = equipment
        self.connection = equipment.connection
        self.decoder = ModbusDecoder(
            equipment.signals,
            max_registers=equipment.max_registers_per_read,
            max_bits=equipment.max_bits_per_read,
            max_gap=equipment.max_gap,
        )
        # Every request has pymodbus' own deadline (timeout); `backstop` bounds a poll at timeout + 0.5 s per
        # request, so a poll cannot legitimately take longer than all of them in a row. The scheduler's
        # backstop is one poll interval beyond that.
        self.backstop = len(self.decoder.blocks) * (self.connection.timeout + 0.5)
        self.poll_deadline = self.backstop + equipment.poll_interval
        self.requests_sent = 0
        self._client: Any = None
        self._readers: dict[str, Callable[..., Any]] = {}
        self._malformed: set[tuple[int, str]] = set()
        """(block address, status) already logged: a malformed answer is logged once, not every poll."""

    @property
    def where(self) -> str:
        return f"{self.connection.host}:{self.connection.port}"

    def endpoint(self) -> tuple[str, int]:
        """`HasEndpoint`: the supervisor probes this port while the machine refuses connections."""
        return self.connection.host, self.connection.port

    async def __aenter__(self) -> Self:
        # Modbus TCP has no handshake: entering is the TCP connect alone, so every failure here is
        # `unreachable` (the supervisor's probe may end the backoff when the port accepts again).
        client = _new_client(self.connection)
        ok = False
        try:
            with anyio.move_on_after(self.connection.timeout + 0.5):
                ok = bool(await client.connect())
        except OSError as exc:
            client.close()
            raise AdapterError(f"cannot connect to {self.where}: {exc.strerror or exc}", unreachable=True) from exc
        if not ok or not client.connected:
            client.close()
            raise AdapterError(f"cannot connect to {self.where}", unreachable=True)
        self._client = client
        self._readers = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def poll(self) -> list[Record]:
        client = self._client
        if client is None:
            raise AdapterError(f"not connected to {self.where}")
        ts = utc_iso()
        decoder = self.decoder
        values = decoder.new_poll()
        unit_id = self.connection.unit_id
        readers = self._readers
        from pymodbus.exceptions import ModbusException, ModbusIOException  # noqa: PLC0415

        # pymodbus applies `timeout` to every request; the backstop is one deadline per poll, the sum of the
        # per-request ones (a cancel scope and a timer per request cost as much as decoding its answer).
        with anyio.move_on_after(self.backstop) as scope:
            for block in decoder.blocks:
                req = block.request
                try:
                    rr = await readers[req.table](req.address, count=req.count, device_id=unit_id)
                except ModbusIOException as exc:
                    if "No response" in str(exc):  # pymodbus' own timeout (retries=0)
                        raise AdapterError(
                            f"no answer from {self.where} within {self.connection.timeout:g}s"
                        ) from exc
                    raise AdapterError(f"connection to {self.where} failed: {exc}") from exc
                except (ModbusException, OSError) as exc:
                    raise AdapterError(f"connection to {self.where} lost: {type(exc).__name__}") from exc
                self.requests_sent += 1
                if rr.isError() and not hasattr(rr, "exception_code"):
                    raise AdapterError(f"bad answer from {self.where}: {rr}")
                problem = decoder.decode_answer(block, rr, values)
                if problem is not None and problem != (_exception_status(rr) if rr.isError() else None):
                    self._log_malformed(req, problem, rr)
        if scope.cancelled_caught:
            raise AdapterError(f"no answer from {self.where} within {self.connection.timeout:g}s")
        return [telemetry(self.equipment.id, self.equipment.type, decoder.readings(values, ts), ts)]

    def _log_malformed(self, request: ReadRequest, problem: str, rr: Any) -> None:
        key = (request.address << 2 | TABLES.index(request.table), problem)
        if key in self._malformed:
            return
        self._malformed.add(key)
        self.ctx.log.warning(
            "malformed answer: the block's readings are marked bad", status=problem, table=request.table,
            address=request.address, count=request.count, function_code=getattr(rr, "function_code", None),
            byte_count=getattr(rr, "byte_count", None), data_bytes=len(getattr(rr, "raw", b"")),
        )

    def offline_records(self, reason: str) -> list[Record]:
        ts = utc_iso()
        return [telemetry(self.equipment.id, self.equipment.type, self.decoder.all_bad("NoConnection", ts), ts)]

    async def read_once(self) -> list[dict[str, Any]]:
        """Connect, poll once, close: the readings (for `check-config --online` and `probe`)."""
        async with self:
            records = await self.poll()
        return list(records[0].body["readings"])


# ---------------------------------------------------------------------------------------------------
# `emsedge probe modbus://host:port ...`


def _probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emsedge probe", description="Read Modbus registers once and print them decoded."
    )
    p.add_argument("url", help="modbus://host:port")
    p.add_argument("--table", choices=TABLES, default="holding")
    p.add_argument("--address", type=int, default=0, help="0-based protocol offset")
    p.add_argument("--count", type=int, default=1, help="number of values")
    p.add_argument("--type", default="uint16", choices=[*_STRUCT_CHAR, "string"], dest="type_")
    p.add_argument("--length", type=int, default=None, help="string length in registers")
    p.add_argument("--unit-id", type=int, default=1)
    p.add_argument("--word-order", choices=("big", "little"), default="big")
    p.add_argument("--byte-order", choices=("big", "little"), default="big")
    p.add_argument("--timeout", type=float, default=2.0)
    return p


def main_probe(argv: list[str]) -> int:
    """Read `count` consecutive values and print address, raw registers and decoded value."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    args = _probe_parser().parse_args(argv)
    parts = urlsplit(args.url if "://" in args.url else f"modbus://{args.url}")
    if parts.scheme not in ("modbus", "modbus+tcp", "tcp") or not parts.hostname:
        print(f"emsedge probe: {args.url!r} is not modbus://host:port", file=sys.stderr)
        return 2
    bits = args.table in BIT_TABLES
    type_ = "bool" if bits else args.type_
    if type_ == "bool" and not bits:
        print("emsedge probe: type bool needs --table coil or discrete", file=sys.stderr)
        return 2
    length = (args.length or 1) if type_ == "string" else None
    try:
        signals = []
        address = args.address
        for n in range(args.count):
            s = ModbusSignal(
                name=f"v{n}", table=args.table, address=address, type=type_, word_order=args.word_order,
                byte_order=args.byte_order, length=length,
            )
            signals.append(s)
            address += signal_width(s)
        equipment = ModbusEquipment(
            id="probe", type="other", adapter="modbus", signals=signals,
            connection=ModbusConnection(
                host=parts.hostname, port=parts.port or 502, unit_id=args.unit_id, timeout=args.timeout
            ),
        )
    except ValueError as exc:
        print(f"emsedge probe: {exc}", file=sys.stderr)
        return 2

    async def _ctx_emit(_records: Sequence[Record]) -> None:
        return None

    adapter = ModbusAdapter(AdapterContext(equipment=equipment, emit=_ctx_emit))
    started = time.perf_counter()
    try:
        readings = anyio.run(adapter.read_once)
    except AdapterError as exc:
        print(f"emsedge probe: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(f"{'address':>8}  {'type':<8} {'value':<24} quality")
    failed = False
    for s, r in zip(signals, readings, strict=True):
        value = r["value"]
        shown = repr(value) if isinstance(value, str) else (f"{value:.6g}" if isinstance(value, float) else str(value))
        status = f" ({r['status']})" if r.get("status") else ""
        failed |= r["quality"] != "good"
        print(f"{s.address:>8}  {s.type:<8} {shown:<24} {r['quality']}{status}")
    print(f"{len(readings)} values from {args.url} in {adapter.requests_sent} request(s), {elapsed * 1000:.1f} ms")
    return 1 if failed else 0
