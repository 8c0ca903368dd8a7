"""SPEA in-circuit / flying-probe result files: `;`-separated records, one board per START ... END.

    FORMAT;mmdd                                                   date order of the file (mmdd or ddmm)
    START;Programme;<program>;<revision>;<sequence>;<operator>;<date>;<time>
    ANL;<site>;<block>;<step>;<sub>;<description>;;<PASS|FAIL>;<value>;<low>;<high>;<unit>;<pins>;<seq>
    SN;<serial>
    BOARDRESULT;<PASS|FAIL>
    END;<PASS|FAIL|...>;<date>;<time>

Consecutive `ANL` lines of one block form one test; a line whose value and limits are all zero without a
unit is a pass/fail step without a measurement. Other record types (`LOT`, ...) are skipped.
"""

from __future__ import annotations

import math

from emsedge.adapters.result_files.model import Measurement, Result, TestedBoard, TestStep
from emsedge.adapters.result_files.parsers import DateOrder, ParseError, ParseOptions, numeric_date, register
from emsedge.adapters.result_files.units import ValueFormatError, quantity, unit_symbol

_END_RESULTS: dict[str, Result] = {"PASS": "pass", "FAIL": "fail", "ERROR": "error"}


def _number(text: str, line: int, what: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ParseError(f"{what} {text!r} is not a number", line) from None
    return value if math.isfinite(value) else None


class _Board:
    def __init__(self, fields: list[str], order: DateOrder, line: int) -> None:
        if len(fields) < 8:
            raise ParseError(f"START has {len(fields)} fields, expected 8", line)
        self.line = line
        self.program = fields[2].strip() or None
        self.revision = fields[3].strip() or None
        self.operator = fields[5].strip() or None
        self.started = numeric_date(f"{fields[6]} {fields[7]}", order, line)
        self.serial: str | None = None
        self.tests: list[tuple[str, list[Measurement], bool, str]] = []
        self.sites: set[str] = set()

    def add(self, fields: list[str], line: int) -> None:
        if len(fields) < 12:
            raise ParseError(f"ANL has {len(fields)} fields, expected at least 12", line)
        self.sites.add(fields[1].strip())
        block, name, verdict = fields[2].strip(), fields[5].strip(), fields[7].strip().upper()
        if verdict not in ("PASS", "FAIL"):
            raise ParseError(f"ANL result {fields[7]!r} is neither PASS nor FAIL", line)
        value_text, unit_text = fields[8].strip(), fields[11].strip()
        low, high = _number(fields[9], line, "low limit"), _number(fields[10], line, "high limit")
        value: float | str | None
        try:
            value, unit = quantity(value_text) if value_text else (None, None)
        except ValueFormatError:
            value, unit = value_text, None  # e.g. "Automatic": kept as written
        if unit_text:
            unit = unit_symbol(unit_text)
        passed = verdict == "PASS"
        measurement = None
        if not (value in (0.0, None) and not low and not high and not unit_text):
            measurement = Measurement(name or block, value, unit, low, high, None, "pass" if passed else "fail")
        if not self.tests or self.tests[-1][0] != block:
            self.tests.append((block, [], True, verdict))
        test_name, measurements, all_passed, raw = self.tests[-1]
        if measurement is not None:
            measurements.append(measurement)
        self.tests[-1] = (test_name, measurements, all_passed and passed, raw if passed else verdict)


@register("spea")
def parse(data: bytes, options: ParseOptions) -> list[TestedBoard]:
    order: DateOrder = options.date_order or "mdy"
    boards: list[TestedBoard] = []
    board: _Board | None = None
    for number, raw in enumerate(options.decode(data).splitlines(), start=1):
        fields = raw.rstrip("\r\n").split(";")
        kind = fields[0].strip().upper()
        if kind == "FORMAT" and len(fields) > 1 and options.date_order is None:
            order = "dmy" if fields[1].strip().lower() == "ddmm" else "mdy"
        elif kind == "START":
            if board is not None:
                raise ParseError(f"START while the board started at line {board.line} has no END", number)
            board = _Board(fields, order, number)
        elif board is None:
            if kind in ("ANL", "SN", "END", "BOARDRESULT"):
                raise ParseError(f"{kind} before START", number)
        elif kind == "ANL":
            board.add(fields, number)
        elif kind == "SN" and len(fields) > 1:
            board.serial = fields[1].strip() or None
        elif kind == "END":
            if len(fields) < 4:
                raise ParseError(f"END has {len(fields)} fields, expected 4", number)
            if not board.serial:
                raise ParseError(f"board started at line {board.line} has no SN record", number)
            verdict = fields[1].strip()
            site = next(iter(board.sites)) if len(board.sites) == 1 else ""
            boards.append(TestedBoard(
                serial=board.serial,
                result=_END_RESULTS.get(verdict.upper(), "aborted"),
                raw_result=verdict,
                test_method="ict",
                program=board.program,
                program_revision=board.revision,
                operator=board.operator,
                started=board.started,
                ended=numeric_date(f"{fields[2]} {fields[3]}", order, number),
                board_number=int(site) if site.isdigit() else None,
                tests=tuple(
                    TestStep(name, "pass" if ok else "fail", tuple(ms), raw_verdict)
                    for name, ms, ok, raw_verdict in board.tests
                ),
            ))
            board = None
    if board is not None:
        raise ParseError("board has no END record (file still being written?)", board.line)
    if not boards:
        raise ParseError("no START ... END board: not a SPEA result file")
    return boards
