"""Bounds on values that come from equipment, shared by every decoder.

A reading's value travels as JSON (orjson) inside an envelope; orjson refuses nesting deeper than 254
levels, integers outside the 64-bit range and strings that are not valid UTF-8 (lone surrogates). A
decoder that let one of those through would hand the buffer's writer a record it cannot encode, so
every decoder checks them where the value is built and turns a violation into a bad reading (or an
S9F7, a counted rejection) with a precise reason, never into an exception escaping a session.

Bounds, and why they are these numbers:

* `MAX_DEPTH` 32 levels of nesting inside one value: real structures (an OPC UA structure of arrays, a
  SECS-II report of lists) are under 10 deep; 32 leaves room and keeps the envelope far from 254.
* `MAX_ELEMENTS` 100,000 elements per value (list items, structure fields, bytes / 64): a wafer or
  panel map of 100,000 sites still fits; above that one value would dominate a batch's memory.
* integers in [-2**63, 2**64 - 1]: what orjson (and most MES JSON parsers) can carry.
"""

from __future__ import annotations

from typing import Final

__all__ = ["INT_MAX", "INT_MIN", "MAX_DEPTH", "MAX_ELEMENTS", "Budget", "ValueRejected", "check_int", "repair_text"]

MAX_DEPTH: Final = 32
MAX_ELEMENTS: Final = 100_000
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1

LIMITS_EXCEEDED: Final = "BadEncodingLimitsExceeded"
OUT_OF_RANGE: Final = "BadOutOfRange"


class ValueRejected(ValueError):
    """A value beyond a bound: `status` is the reading status to publish, `str(exc)` the reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Budget:
    """Nesting depth and element count of one value, checked before its children are converted."""

    __slots__ = ("elements", "max_depth", "max_elements")

    def __init__(self, max_depth: int = MAX_DEPTH, max_elements: int = MAX_ELEMENTS) -> None:
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.elements = 0

    def enter(self, depth: int, count: int) -> None:
        """Account for `count` elements at nesting level `depth`; raise `ValueRejected` past a bound."""
        if depth > self.max_depth:
            raise ValueRejected(LIMITS_EXCEEDED, f"nested deeper than {self.max_depth} levels")
        self.elements += count
        if self.elements > self.max_elements:
            raise ValueRejected(LIMITS_EXCEEDED, f"more than {self.max_elements} elements")


def check_int(value: int) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise ValueRejected(OUT_OF_RANGE, f"integer of {value.bit_length()} bits does not fit 64 bits")


def repair_text(text: str, encoding: str = "utf-8") -> str:
    """Text as the equipment meant it, always valid UTF-8 for the encoder.

    Libraries that decode UTF-8 with `surrogateescape` (asyncua) keep each undecodable byte as a lone
    surrogate; those bytes are recovered and the whole string is decoded again in `encoding` (the
    equipment's, e.g. latin-1 or cp1252 on older controllers), undecodable bytes replaced by U+FFFD.
    With `encoding` other than UTF-8, text is re-decoded even when it happened to be valid UTF-8.
    """
    if text.isascii():
        return text
    utf8 = encoding.replace("-", "").replace("_", "").lower() == "utf8"
    if utf8:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return text
    raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else text.encode("utf-8", "surrogatepass")
    try:
        return raw.decode(encoding, "replace").encode("utf-8", "replace").decode("utf-8")
    except LookupError:  # an encoding Python does not know (config validation should have refused it)
        return raw.decode("utf-8", "replace")


def _only_escapes(text: str) -> bool:
    """True when every surrogate in `text` is one `surrogateescape` produced (U+DC80..U+DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)
