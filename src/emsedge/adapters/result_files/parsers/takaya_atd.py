"""Takaya flying-probe `.ATD` result files: a header block, then per board group a tab-separated table.

    @
    * FAIL *                         overall verdict
    Model:MAINBOARD_TOP.SWX          test program
    DATE 4/5/2026 13:08:08           start, tester-local (d/m/y unless `date_order:` says otherwise)
    Test time:105 s                  duration
    Test ID :TAK4                    tester
    @
    * GROUP No.1   *                 one group per board of the panel (absent for a single board)
    * PASS *
    Serial No.:0601996045
    <header row: Group_No. Step_number Parts Value Unit ... Judgement Ref._Value_(EL) Ref._Value_(Fig) ...>
    <one row per step>

Columns are found by name in the header row. Numbers come from the `(Fig)` columns (base units); the
element letter of `Ref._Value_(EL)` gives the unit (R ohm, C farad, L henry, D volt); limits are the
reference value widened by `Tolerance_(+)%` and `Tolerance_(-)%`. Rows of one part form one test.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from emsedge.adapters.result_files.model import Measurement, Result, TestedBoard, TestStep
from emsedge.adapters.result_files.parsers import ParseError, ParseOptions, numeric_date, register
from emsedge.adapters.result_files.units import clean

_VERDICT = re.compile(r"^\*\s*(PASS|FAIL|NG|GOOD|ABORT|STOP)\s*\*\s*$", re.IGNORECASE)
_GROUP = re.compile(r"^\*\s*GROUP\s+No\.\s*(\d+)\s*\*\s*$", re.IGNORECASE)
_ELEMENT_UNITS = {"R": "Ohm", "C": "F", "L": "H", "D": "V", "V": "V", "I": "A"}
_PASS = {"PASS", "OK", "GOOD"}


def _verdict(word: str) -> Result:
    word = word.upper()
    if word in _PASS:
        return "pass"
    if word in ("ABORT", "STOP"):
        return "aborted"
    return "fail"


def _number(text: str, line: int, what: str) -> float | None:
    text = text.strip().rstrip("%")
    if not text or set(text) <= {".", "*"}:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ParseError(f"{what} {text!r} is not a number", line) from None
    return value if math.isfinite(value) else None


class _Group:
    def __init__(self, number: int | None, verdict: str | None) -> None:
        self.number, self.verdict = number, verdict
        self.serial: str | None = None
        self.columns: dict[str, int] | None = None
        self.tests: dict[str, tuple[bool, list[Measurement], str]] = {}

    def row(self, cells: list[str], line: int) -> None:
        assert self.columns is not None
        need = max(self.columns.values())
        if len(cells) <= need:
            raise ParseError(f"row has {len(cells)} cells, the header names {need + 1}", line)
        col = self.columns
        part = cells[col["Parts"]].strip()
        if not part:
            raise ParseError("row without a part name", line)
        judgement = cells[col["Judgement"]].strip()
        passed = _verdict(judgement) == "pass"
        def cell(name: str) -> str:
            return cells[col[name]] if name in col else ""

        nominal = _number(cell("Ref._Value_(Fig)"), line, "reference value")
        value = _number(cell("Test_Value_1_(Fig)"), line, "test value")
        element = cell("Ref._Value_(EL)").strip().upper()
        low = high = None
        if nominal is not None:
            plus = _number(cell("Tolerance_(+)%"), line, "tolerance (+)")
            minus = _number(cell("Tolerance_(-)%"), line, "tolerance (-)")
            if plus is not None and minus is not None:
                a, b = nominal * (1 - abs(minus) / 100), nominal * (1 + abs(plus) / 100)
                low, high = clean(min(a, b)), clean(max(a, b))
        measurement = Measurement(
            part, value, _ELEMENT_UNITS.get(element[:1]), low, high, nominal, "pass" if passed else "fail"
        )
        ok, measurements, raw = self.tests.get(part, (True, [], judgement))
        measurements.append(measurement)
        self.tests[part] = (ok and passed, measurements, raw if passed else judgement)


@register("takaya_atd")
def parse(data: bytes, options: ParseOptions) -> list[TestedBoard]:
    order = options.date_order or "dmy"
    lines = options.decode(data).splitlines()
    if not lines or lines[0].strip() != "@":
        raise ParseError("does not start with the '@' header marker: not a Takaya .ATD file", 1)
    overall: str | None = None
    program = tester = None
    started: datetime | None = None
    duration: float | None = None
    groups: list[_Group] = []
    in_header = True
    for number, raw in enumerate(lines[1:], start=2):
        text = raw.strip()
        if in_header:
            if text == "@":
                in_header = False
            elif (m := _VERDICT.match(text)) is not None:
                overall = m.group(1)
            elif text.startswith("Model:"):
                program = text.removeprefix("Model:").strip().rsplit(".", 1)[0] or None
            elif text.startswith("DATE"):
                started = numeric_date(text.removeprefix("DATE").strip(), order, number)
            elif text.startswith("Test time:"):
                duration = _number((text.removeprefix("Test time:").split() or [""])[0], number, "test time")
                if duration is not None and not 0 <= duration <= 7 * 24 * 3600:
                    raise ParseError(f"test time {duration} s is not plausible", number)
            elif text.startswith("Test ID"):
                tester = text.split(":", 1)[-1].strip() or None
            elif text.startswith("Serial No."):
                groups.append(_Group(None, overall))
                groups[-1].serial = text.split(":", 1)[-1].strip() or None
            continue
        if not text:
            continue
        if (m := _GROUP.match(text)) is not None:
            groups.append(_Group(int(m.group(1)), None))
        elif (m := _VERDICT.match(text)) is not None:
            if not groups:
                groups.append(_Group(None, None))
            groups[-1].verdict = m.group(1)
        elif text.startswith("Serial No."):
            if not groups:
                groups.append(_Group(None, overall))
            groups[-1].serial = text.split(":", 1)[-1].strip() or None
        elif "\t" in raw and {"Parts", "Judgement"} <= set(names := [c.strip() for c in raw.split("\t")]):
            if not groups:
                raise ParseError("table header before any board", number)
            columns: dict[str, int] = {}
            for i, name in enumerate(names):
                columns.setdefault(name, i)
            groups[-1].columns = columns
        elif "\t" in raw:
            if not groups or groups[-1].columns is None:
                raise ParseError("table row before the header row", number)
            groups[-1].row(raw.split("\t"), number)
        # other lines (D.T:/G.T: counters) carry nothing a board needs
    if in_header:
        raise ParseError("the header block is not closed by '@' (file still being written?)", len(lines))
    boards: list[TestedBoard] = []
    ended = started + timedelta(seconds=duration) if started is not None and duration is not None else None
    for group in groups:
        if not group.serial:
            raise ParseError(f"board group {group.number or 1} has no 'Serial No.' line")
        verdict = group.verdict or overall
        if verdict is None:
            raise ParseError(f"board {group.serial} has no '* PASS *' / '* FAIL *' verdict")
        boards.append(TestedBoard(
            serial=group.serial, result=_verdict(verdict), raw_result=verdict, test_method="fpt",
            program=program, tester=tester, started=started, ended=ended, board_number=group.number,
            tests=tuple(
                TestStep(part, "pass" if ok else "fail", tuple(ms), raw)
                for part, (ok, ms, raw) in group.tests.items()
            ),
        ))
    if not boards:
        raise ParseError("no board ('Serial No.' line) in the file")
    return boards
