"""Result-file parsers: one small function per format, `(data, options) -> list[TestedBoard]`.

A parser gets the whole file as bytes (the adapter refuses files above `max_file_size` before reading
them, so memory stays bounded) and returns every board in it, or raises `ParseError(reason, line)`.
It must not raise anything else: a fuzz test feeds every built-in parser random bytes to hold that. A file
is all or nothing: one malformed record rejects the whole file (a half-read panel would tell MES that
boards were never tested).

Built-ins register themselves with `@register("name")`. A plant adds its own format as a plug-in: a
package declares

    [project.entry-points."emsedge.result_parsers"]
    my_format = "my_package.parser:parse"

and `format: my_format` in the config uses it. `parser_for()` resolves built-ins first, then entry points.
"""

from __future__ import annotations

import codecs
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Literal

from emsedge.adapters.result_files.model import TestedBoard

if TYPE_CHECKING:
    from emsedge.adapters.result_files.config import DelimitedMapping

ENTRY_POINT_GROUP = "emsedge.result_parsers"
DateOrder = Literal["dmy", "mdy", "ymd"]


class ParseError(Exception):
    """A file that does not hold what its format promises. `line` is 1-based, None when not line-bound."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class ParseOptions:
    """What a parser may need from the equipment config besides the bytes."""

    encoding: str = "utf-8"
    date_order: DateOrder | None = None  # None: the format's own convention
    delimited: DelimitedMapping | None = None

    def decode(self, data: bytes) -> str:
        """Text of the file; undecodable bytes and binary content become a ParseError naming the line."""
        wide = codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32")) if _known(self.encoding) else False
        if not wide and b"\x00" in data[:65536]:
            raise ParseError("binary content (NUL bytes): not a text result file", _line_of(data, data.index(b"\x00")))
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            reason = f"byte 0x{data[exc.start]:02x} is not valid {self.encoding} (set `encoding:`)"
            raise ParseError(reason, _line_of(data, exc.start)) from None
        except LookupError:
            raise ParseError(f"unknown encoding {self.encoding!r}") from None
        return text.removeprefix("\ufeff")


Parser = Callable[[bytes, ParseOptions], list[TestedBoard]]

BUILTIN: dict[str, str] = {
    "i3070": "emsedge.adapters.result_files.parsers.i3070:parse",
    "gr228x": "emsedge.adapters.result_files.parsers.gr228x:parse",
    "spea": "emsedge.adapters.result_files.parsers.spea:parse",
    "takaya_atd": "emsedge.adapters.result_files.parsers.takaya_atd:parse",
    "delimited": "emsedge.adapters.result_files.parsers.delimited:parse",
}
_registered: dict[str, Parser] = {}


def register(name: str) -> Callable[[Parser], Parser]:
    """Register a parser under `name` in this process (tests, or a plug-in that prefers code to metadata)."""

    def add(parser: Parser) -> Parser:
        _registered[name] = parser
        return parser

    return add


def available() -> list[str]:
    """Every format name `format:` accepts here: built-ins, registered, and installed plug-ins."""
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted({*BUILTIN, *_registered, *plugins})


def parser_for(name: str) -> Parser:
    if name in _registered:
        return _registered[name]
    target = BUILTIN.get(name)
    if target is not None:
        module, _, attr = target.partition(":")
        parser: Parser = getattr(importlib.import_module(module), attr)
        return parser
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded: Parser = ep.load()
            return loaded
    raise KeyError(f"no result-file parser named {name!r} (known: {', '.join(available())})")


def _known(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


# ---------------------------------------------------------------------------------------------------
# Shared helpers for the built-in parsers

_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}


def month_number(name: str) -> int:
    try:
        return _MONTHS[name[:3].upper()]
    except KeyError:
        raise ValueError(f"unknown month {name!r}") from None


def numeric_date(text: str, order: DateOrder, line: int) -> datetime:
    """`4/5/2023 13:08:08` (d/m/y with order dmy) or `2023-05-04 13:08:08` (always ymd) -> naive datetime."""
    text = text.strip()
    try:
        date_part, _, time_part = text.partition(" ")
        if "-" in date_part and date_part[:4].isdigit():
            order = "ymd"
        parts = [int(p) for p in date_part.replace("-", "/").replace(".", "/").split("/")]
        if len(parts) != 3:
            raise ValueError("expected three date fields")
        if order == "dmy":
            day, month, year = parts
        elif order == "mdy":
            month, day, year = parts
        else:
            year, month, day = parts
        if year < 100:
            year += 2000
        hms = [int(p) for p in time_part.strip().split(":")] if time_part.strip() else [0, 0, 0]
        while len(hms) < 3:
            hms.append(0)
        return datetime(year, month, day, hms[0], hms[1], hms[2])
    except (ValueError, IndexError) as exc:
        raise ParseError(f"bad date {text!r} ({order}): {exc}", line) from None
