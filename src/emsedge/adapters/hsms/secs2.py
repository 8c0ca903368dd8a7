"""SECS-II (SEMI E5) item codec: bytes <-> `Item` trees, plus an SML-like text form for logs.

Wire form of one item: a format byte `(format_code << 2) | n_length_bytes` (n in 1..3), then the
length (big-endian, `n` bytes), then the data. For `L` the length counts child items, for every other
format it counts data bytes. Numbers are big-endian.

Invariants:

* `decode()` consumes exactly the bytes it is given and, whatever those bytes are, either returns an
  `Item` or raises `Secs2DecodeError` (never `struct.error`, `RecursionError`, `MemoryError` ...):
  it is iterative (no recursion on nesting depth) and never allocates more than the input's size,
  because every declared length is checked against the bytes actually left before it is used.
* With a `DecodeBudget`, nesting depth, the number of items (list entries and array elements) and the
  input size are checked against it *before* each item is built, so a hostile message costs at most
  the budget, whatever it declares (8,000,000 empty lists in 16 MB are refused after `max_items`).
* `encode(decode(b)) == b` for every `b` that used minimal length bytes; `decode(encode(i)) == i`.
* `A` and `J` text travels as latin-1 so every byte string round-trips; equipment sends ASCII in practice.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BOOLEAN",
    "F4",
    "F8",
    "FORMATS",
    "I4",
    "U1",
    "U2",
    "U4",
    "U8",
    "A",
    "B",
    "DecodeBudget",
    "Item",
    "J",
    "L",
    "Secs2BudgetExceeded",
    "Secs2DecodeError",
    "Secs2EncodeError",
    "decode",
    "encode",
    "num",
    "to_sml",
]


class Secs2DecodeError(ValueError):
    """The bytes are not one well-formed SECS-II item."""


class Secs2BudgetExceeded(Secs2DecodeError):
    """Well-formed so far, but beyond the receiver's `DecodeBudget` (answered like any undecodable body)."""


@dataclass(frozen=True, slots=True)
class DecodeBudget:
    """Most a receiver decodes of one message body; see `decode`.

    Defaults: real GEM messages nest under 10 deep and an S6F11 of a full panel's results is a few
    thousand items; 32 levels keep every value well inside what the JSON encoder accepts (254), and
    250,000 items bound the memory of one decoded body to some tens of MB.
    """

    max_depth: int = 32
    max_items: int = 250_000
    max_bytes: int = 4 << 20


class Secs2EncodeError(ValueError):
    """The value cannot be expressed in the requested SECS-II format."""


# name -> format code (6 bits)
FORMATS: Final[dict[str, int]] = {
    "L": 0o00,
    "B": 0o10,
    "BOOLEAN": 0o11,
    "A": 0o20,
    "J": 0o21,
    "I8": 0o30,
    "I1": 0o31,
    "I2": 0o32,
    "I4": 0o34,
    "F8": 0o40,
    "F4": 0o44,
    "U8": 0o50,
    "U1": 0o51,
    "U2": 0o52,
    "U4": 0o54,
}
_NAMES: Final[dict[int, str]] = {code: name for name, code in FORMATS.items()}

# numeric formats: name -> (struct code, size)
_NUMERIC: Final[dict[str, tuple[str, int]]] = {
    "I1": ("b", 1),
    "I2": ("h", 2),
    "I4": ("i", 4),
    "I8": ("q", 8),
    "U1": ("B", 1),
    "U2": ("H", 2),
    "U4": ("I", 4),
    "U8": ("Q", 8),
    "F4": ("f", 4),
    "F8": ("d", 8),
}
MAX_LENGTH: Final = 0xFFFFFF


@dataclass(slots=True, eq=True)
class Item:
    """One SECS-II item.

    `value` by format: `L` -> tuple of `Item`; `B` -> bytes; `A`/`J` -> str; `BOOLEAN` -> tuple of bool;
    numeric formats -> tuple of int (I*/U*) or float (F*). Arrays are tuples; a scalar is a 1-tuple.
    Treat it as immutable (not frozen only because frozen dataclasses are slow to build on the hot path).
    """

    fmt: str
    value: Any

    # -- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, index: int) -> Item:
        if self.fmt != "L":
            raise TypeError(f"{self.fmt} item is not a list")
        item: Item = self.value[index]
        return item

    @property
    def items(self) -> tuple[Item, ...]:
        if self.fmt != "L":
            raise TypeError(f"{self.fmt} item is not a list")
        items: tuple[Item, ...] = self.value
        return items

    def scalar(self) -> Any:
        """The single value of a one-element item (raises ValueError otherwise): ids, acks, codes."""
        if self.fmt == "L":
            raise ValueError("a list has no scalar value")
        if self.fmt in ("A", "J"):
            return self.value
        if len(self.value) != 1:
            raise ValueError(f"{self.fmt} item has {len(self.value)} values, expected 1")
        return self.value[0]

    def to_python(self) -> Any:
        """Plain JSON-friendly value: L -> list, A -> str, one-element arrays -> scalar, empty -> None.

        `B` becomes an int (one byte) or a list of ints, so payloads never carry raw bytes.
        """
        if self.fmt == "L":
            return [child.to_python() for child in self.value]
        if self.fmt in ("A", "J"):
            return self.value
        values = list(self.value)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    @property
    def is_empty(self) -> bool:
        return len(self.value) == 0


# ---------------------------------------------------------------------------------------------------
# constructors, named like the SML formats: L(U4(1), A("x"))


def L(*items: Item) -> Item:
    return Item("L", tuple(items))


def A(text: str) -> Item:
    return Item("A", text)


def J(text: str) -> Item:
    return Item("J", text)


def B(*values: int) -> Item:
    return Item("B", bytes(values))


def BOOLEAN(*values: bool) -> Item:
    return Item("BOOLEAN", tuple(bool(v) for v in values))


def num(fmt: str, *values: float) -> Item:
    if fmt not in _NUMERIC:
        raise Secs2EncodeError(f"{fmt} is not a numeric format")
    if fmt.startswith("F"):
        return Item(fmt, tuple(float(v) for v in values))
    return Item(fmt, tuple(int(v) for v in values))


def U1(*values: int) -> Item:
    return Item("U1", values)


def U2(*values: int) -> Item:
    return Item("U2", values)


def U4(*values: int) -> Item:
    return Item("U4", values)


def U8(*values: int) -> Item:
    return Item("U8", values)


def I4(*values: int) -> Item:
    return Item("I4", values)


def F4(*values: float) -> Item:
    return Item("F4", values)


def F8(*values: float) -> Item:
    return Item("F8", values)


# ---------------------------------------------------------------------------------------------------
# encode


def _header(code: int, length: int) -> bytes:
    if length > MAX_LENGTH:
        raise Secs2EncodeError(f"item length {length} exceeds {MAX_LENGTH}")
    if length <= 0xFF:
        return bytes((code << 2 | 1, length))
    if length <= 0xFFFF:
        return bytes((code << 2 | 2, length >> 8, length & 0xFF))
    return bytes((code << 2 | 3, length >> 16, (length >> 8) & 0xFF, length & 0xFF))


def _encode_into(item: Item, out: list[bytes]) -> None:
    fmt = item.fmt
    code = FORMATS.get(fmt)
    if code is None:
        raise Secs2EncodeError(f"unknown format {fmt!r}")
    if fmt == "L":
        children: Sequence[Item] = item.value
        out.append(_header(code, len(children)))
        for child in children:
            _encode_into(child, out)
        return
    if fmt in ("A", "J"):
        try:
            data = item.value.encode("latin-1")
        except (UnicodeEncodeError, AttributeError) as exc:
            raise Secs2EncodeError(f"{fmt} value {item.value!r} is not latin-1 text") from exc
    elif fmt == "B":
        data = bytes(item.value)
    elif fmt == "BOOLEAN":
        data = bytes(1 if v else 0 for v in item.value)
    else:
        st, _size = _NUMERIC[fmt]
        values = item.value
        try:
            data = struct.pack(f">{len(values)}{st}", *values)
        except struct.error as exc:
            raise Secs2EncodeError(f"{fmt} cannot hold {values!r}: {exc}") from exc
    out.append(_header(code, len(data)))
    out.append(data)


def encode(item: Item) -> bytes:
    out: list[bytes] = []
    _encode_into(item, out)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------------
# decode


_SINGLE: Final[dict[str, struct.Struct]] = {name: struct.Struct(">" + st) for name, (st, _) in _NUMERIC.items()}

# format byte -> (format name, number of length bytes, numeric element size or 0); None: invalid byte
_FORMAT_BYTES: Final[list[tuple[str, int, int] | None]] = [
    (_NAMES[fb >> 2], fb & 3, _NUMERIC[_NAMES[fb >> 2]][1] if _NAMES[fb >> 2] in _NUMERIC else 0)
    if fb >> 2 in _NAMES and fb & 3
    else None
    for fb in range(256)
]


def _decode_leaf(fmt: str, size: int, data: bytes) -> Item:
    if size:
        n = len(data)
        if n == size:
            return Item(fmt, _SINGLE[fmt].unpack(data))
        if n % size:
            raise Secs2DecodeError(f"{fmt} item of {n} bytes is not a multiple of {size}")
        return Item(fmt, struct.unpack(f">{n // size}{_NUMERIC[fmt][0]}", data))
    if fmt in {"A", "J"}:
        return Item(fmt, data.decode("latin-1"))
    if fmt == "B":
        return Item("B", data)
    return Item("BOOLEAN", tuple(b != 0 for b in data))


def decode(data: bytes | bytearray | memoryview, budget: DecodeBudget | None = None) -> Item:
    """Decode exactly one item filling all of `data`; raise `Secs2DecodeError` on anything else.

    With `budget`, raise `Secs2BudgetExceeded` as soon as the input is bigger, nests deeper or declares
    more items than it allows, before building what was declared.
    """
    buf = bytes(data)
    end = len(buf)
    max_depth = max_items = 1 << 62
    if budget is not None:
        if end > budget.max_bytes:
            raise Secs2BudgetExceeded(f"body of {end} bytes exceeds the budget of {budget.max_bytes}")
        max_depth, max_items = budget.max_depth, budget.max_items
    pos = 0
    formats = _FORMAT_BYTES
    # stack of (children collected so far, children expected)
    stack: list[tuple[list[Item], int]] = []
    items = 0  # items built or promised by a list header (each promised child is at least one item)
    while True:
        if pos + 2 > end:
            raise Secs2DecodeError(f"truncated item header at offset {pos}")
        spec = formats[buf[pos]]
        if spec is None:
            fb = buf[pos]
            if fb & 3 == 0:
                raise Secs2DecodeError(f"format byte at offset {pos} declares no length bytes")
            raise Secs2DecodeError(f"unknown format code 0o{fb >> 2:02o} at offset {pos}")
        name, n_len, size = spec
        if n_len == 1:
            length = buf[pos + 1]
            pos += 2
        else:
            if pos + 1 + n_len > end:
                raise Secs2DecodeError(f"truncated length at offset {pos}")
            length = int.from_bytes(buf[pos + 1 : pos + 1 + n_len], "big")
            pos += 1 + n_len
        if name == "L":
            # every child takes at least two bytes: refuse impossible counts before building anything
            if length * 2 > end - pos:
                raise Secs2DecodeError(f"list of {length} items cannot fit in {end - pos} bytes")
            items += length
            if items > max_items:
                raise Secs2BudgetExceeded(f"more than {max_items} items")
            if length:
                if len(stack) >= max_depth:
                    raise Secs2BudgetExceeded(f"nested deeper than {max_depth} levels")
                stack.append(([], length))
                continue
            item = Item("L", ())
        else:
            if length > end - pos:
                raise Secs2DecodeError(f"{name} item of {length} bytes but only {end - pos} left")
            if size:
                items += length // size
                if items > max_items:
                    raise Secs2BudgetExceeded(f"more than {max_items} items")
            elif name == "BOOLEAN":
                items += length
                if items > max_items:
                    raise Secs2BudgetExceeded(f"more than {max_items} items")
            item = _decode_leaf(name, size, buf[pos : pos + length])
            pos += length
        # attach the finished item to its parents, closing every list it completes
        while stack:
            children, expected = stack[-1]
            children.append(item)
            if len(children) < expected:
                break
            stack.pop()
            item = Item("L", tuple(children))
        else:
            if pos != end:
                raise Secs2DecodeError(f"{end - pos} trailing bytes after the item")
            return item


# ---------------------------------------------------------------------------------------------------
# SML-like text


def _sml_leaf(item: Item) -> str:
    if item.fmt in ("A", "J"):
        text = item.value.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        return f'<{item.fmt} "{text}">'
    if item.fmt == "B":
        return f"<B {' '.join(f'0x{b:02X}' for b in item.value)}>".replace(" >", ">")
    if item.fmt == "BOOLEAN":
        return f"<BOOLEAN {' '.join('T' if v else 'F' for v in item.value)}>".replace(" >", ">")
    return f"<{item.fmt} {' '.join(repr(v) for v in item.value)}>".replace(" >", ">")


def to_sml(item: Item | None, indent: int = 0, *, max_items: int = 64) -> str:
    """Readable text for logs, e.g. `<L [2] <U4 1> <A "x">>`; long lists are elided after `max_items`."""
    if item is None:
        return ""
    pad = "  " * indent
    if item.fmt != "L":
        return pad + _sml_leaf(item)
    children = item.value
    if not children:
        return pad + "<L [0]>"
    lines = [f"{pad}<L [{len(children)}]"]
    for child in children[:max_items]:
        lines.append(to_sml(child, indent + 1, max_items=max_items))
    if len(children) > max_items:
        lines.append(f"{pad}  ... {len(children) - max_items} more")
    lines.append(f"{pad}>")
    return "\n".join(lines)
