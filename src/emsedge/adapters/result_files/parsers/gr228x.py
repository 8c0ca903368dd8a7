"""Teradyne/GenRad GR228x (and Spectrum) text logs.

    F:\\BOARDS\\MAINBOARD\\MAINBOARD.obc[31-JUL-26  14:17:35      program header: program path [ date
    @31-JUL-26  14:18:51 SN 4711000123                          unit start: date and serial
    (F 300,301,303                                              general failure: (S shorts, (O opens,
                                                                (B bus, (C scratch probe, (F fixture contact
    R508=100.20007K(92.919K,105.131K)R                          result: designator, code, value, (low,high), type
    "31-JUL-26  14:19:02                                        end marker: " pass, / fail, ? abort,
                                                                * error, & system error, ! cancelled

Result codes: `=` in limits, `<` below, `>` above, `#` an informational value (not judged), `%` failed.
Values and limits carry SPICE suffixes (`K`, `M` milli, `MEG`, `U`, `N`, `P`); the trailing type names what
was measured (`R` resistance, `CP`/`CS` capacitance, `LP`/`LS` inductance, `V`/`DC`/`AC` voltage, `I` current,
`HZ` frequency), which gives the unit. Lines of one designator form one test. `]` (return to diagnose)
lines are ignored. A file that ends inside a unit is rejected: the tester has not finished writing it.
"""

from __future__ import annotations

import re
from datetime import datetime

from emsedge.adapters.result_files.model import Measurement, Result, TestedBoard, TestStep
from emsedge.adapters.result_files.parsers import ParseError, ParseOptions, month_number, register
from emsedge.adapters.result_files.units import ValueFormatError, spice_value

_DATE = r"(\d{1,2})-([A-Za-z]{3})-(\d{2,4})\s+(\d{1,2}):(\d{2}):(\d{2})"
_HEADER = re.compile(r"^(?P<path>[^\[]*)\[" + _DATE)
_START = re.compile(r"^@" + _DATE + r"\s+SN\s+(?P<serial>\S.*?)\s*$")
_END = re.compile(r"^(?P<marker>[\"/?*&!])" + _DATE + r"\s*$")
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:E[+-]?\d+)?(?:MEG|[TGKMUNP])?"
_RESULT = re.compile(
    r"^(?P<name>[A-Za-z0-9_.$\-\[\]/]+?)(?P<code>[=<>#%])(?P<value>" + _NUM + r")?"
    r"(?:\((?P<low>" + _NUM + r")?,(?P<high>" + _NUM + r")?\))?(?P<type>[A-Z]*)\s*(?P<message>.*)$",
    re.IGNORECASE,
)
_GENERAL = {"S": "shorts", "O": "opens", "B": "bus", "C": "scratch_probe", "F": "fixture_contact"}
_END_RESULT: dict[str, Result] = {"\"": "pass", "/": "fail", "?": "aborted", "*": "error", "&": "error", "!": "aborted"}
_TYPE_UNITS = {
    "R": "Ohm", "RS": "Ohm", "RP": "Ohm", "CP": "F", "CS": "F", "LP": "H", "LS": "H", "V": "V", "DC": "V",
    "AC": "V", "VS": "V", "AV": "V", "I": "A", "IS": "A", "AI": "A", "HZ": "Hz", "S": "s",
}


def _date(groups: tuple[str | None, ...], line: int) -> datetime:
    day, month, year, hour, minute, second = groups
    try:
        y = int(year or "")
        return datetime(
            y + 2000 if y < 100 else y, month_number(month or ""), int(day or ""),
            int(hour or ""), int(minute or ""), int(second or ""),
        )
    except ValueError as exc:
        raise ParseError(f"bad date: {exc}", line) from None


def _value(text: str | None, line: int) -> float | None:
    if not text:
        return None
    try:
        return spice_value(text)
    except ValueFormatError as exc:
        raise ParseError(str(exc), line) from None


class _Unit:
    def __init__(self, serial: str, started: datetime, line: int) -> None:
        self.serial, self.started, self.line = serial, started, line
        self.tests: dict[str, tuple[Result, list[Measurement], str]] = {}

    def add(self, name: str, result: Result, measurement: Measurement | None, raw: str) -> None:
        previous, measurements, first_raw = self.tests.get(name, ("pass", [], raw))
        if measurement is not None:
            measurements.append(measurement)
        self.tests[name] = ("fail" if "fail" in (previous, result) else "pass", measurements, first_raw)


@register("gr228x")
def parse(data: bytes, options: ParseOptions) -> list[TestedBoard]:
    boards: list[TestedBoard] = []
    program: str | None = None
    unit: _Unit | None = None
    pending = ""
    for number, raw in enumerate(options.decode(data).splitlines(), start=1):
        line = f"{pending} {raw.strip()}" if pending else raw.rstrip()
        if line.endswith(" +"):  # continued on the next line
            pending = line[:-2].rstrip()
            continue
        pending = ""
        if not line.strip():
            continue
        if (m := _START.match(line)) is not None:
            if unit is not None:
                raise ParseError(f"unit SN {unit.serial} (line {unit.line}) has no end marker", number)
            unit = _Unit(m.group("serial"), _date(m.groups()[:6], number), number)
        elif (m := _END.match(line)) is not None:
            if unit is None:
                raise ParseError("end marker without a unit start line", number)
            marker = m.group("marker")
            tests = tuple(TestStep(n, r, tuple(ms), raw_code) for n, (r, ms, raw_code) in unit.tests.items())
            boards.append(TestedBoard(
                serial=unit.serial, result=_END_RESULT[marker], raw_result=marker, test_method="ict",
                program=program, started=unit.started, ended=_date(m.groups()[1:7], number), tests=tests,
            ))
            unit = None
        elif line.startswith("]"):
            continue
        elif unit is None:
            if (m := _HEADER.match(line)) is not None:
                path = m.group("path").replace("\\", "/").rsplit("/", 1)[-1]
                program = path.rsplit(".", 1)[0] or None
            continue  # other text between units (comments, operator notes)
        elif line.startswith("(") and len(line) > 1 and line[1].upper() in _GENERAL:
            unit.add(_GENERAL[line[1].upper()], "fail", None, line[1:].strip())
        elif (m := _RESULT.match(line.strip())) is not None:
            code = m.group("code")
            kind = m.group("type").upper()
            result: Result = "pass" if code in "=#" else "fail"
            value = _value(m.group("value"), number)
            measurement = None
            if value is not None or m.group("low") or m.group("high"):
                measurement = Measurement(
                    m.group("name"), value, _TYPE_UNITS.get(kind),
                    _value(m.group("low"), number), _value(m.group("high"), number), None,
                    None if code == "#" else result,
                )
            unit.add(m.group("name"), result, measurement, code)
        else:
            raise ParseError(f"unrecognised line in unit SN {unit.serial}: {line[:60]!r}", number)
    if unit is not None:
        raise ParseError(f"unit SN {unit.serial} has no end marker (file still being written?)", unit.line)
    if not boards:
        raise ParseError("no unit start line '@<date> SN <serial>': not a GR228x log")
    return boards
