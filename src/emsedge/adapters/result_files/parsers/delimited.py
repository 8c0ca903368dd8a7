"""Delimited (CSV-like) result files described by a column mapping in the config, no code needed.

See `DelimitedMapping` in ../config.py for the keys. The table has one row per measurement; board
attributes come from columns or from `label<sep>value` key rows above the header row. Consecutive rows
with the same serial are one board; rows of one test name are one test. Values and limits go through
`units.quantity`, so `4.7` with unit `kΩ` becomes 4700.0 `Ohm` and `10 µA` becomes 1e-05 `A`.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime
from typing import Any

from emsedge.adapters.result_files.config import DelimitedMapping
from emsedge.adapters.result_files.model import Measurement, Result, TestedBoard, TestStep
from emsedge.adapters.result_files.parsers import ParseError, ParseOptions, register
from emsedge.adapters.result_files.units import ValueFormatError, quantity


class _Reader:
    def __init__(self, mapping: DelimitedMapping, header: list[str], line: int) -> None:
        self.mapping = mapping
        names = [h.strip() for h in header]
        self.index: dict[str, int] = {}
        for field, ref in mapping.columns.items():
            if isinstance(ref, int):
                self.index[field] = ref - 1
            elif ref in names:
                self.index[field] = names.index(ref)
            else:
                raise ParseError(f"column {ref!r} (for {field}) is not in the header row", line)
        self.width = max(self.index.values()) + 1

    def cell(self, row: list[str], field: str) -> str | None:
        i = self.index.get(field)
        if i is None:
            return None
        return row[i].strip() if i < len(row) else ""

    def verdict(self, text: str) -> Result:
        word = text.strip().upper()
        if word in (v.upper() for v in self.mapping.pass_values):
            return "pass"
        if word in (v.upper() for v in self.mapping.aborted_values):
            return "aborted"
        if word in (v.upper() for v in self.mapping.error_values):
            return "error"
        return "fail"

    def number(self, text: str | None, unit: str | None, line: int, what: str) -> tuple[float | None, str | None]:
        if text is None or not text.strip():
            return None, None
        if self.mapping.decimal_comma:
            text = text.replace(",", ".")
        try:
            value, symbol = quantity(text, unit or None)
        except ValueFormatError as exc:
            raise ParseError(f"{what}: {exc}", line) from None
        return (value if math.isfinite(value) else None), symbol

    def date(self, text: str | None, line: int) -> datetime | None:
        if not text:
            return None
        try:
            if self.mapping.date_format:
                return datetime.strptime(text, self.mapping.date_format)
            return datetime.fromisoformat(text)
        except ValueError as exc:
            raise ParseError(f"bad date {text!r}: {exc}", line) from None


def _board(reader: _Reader, attrs: dict[str, str], rows: list[tuple[int, list[str]]]) -> TestedBoard:
    first_line, first = rows[0]
    board: dict[str, Any] = dict(attrs)
    for field in ("result", "program", "program_revision", "tester", "operator", "started", "ended",
                  "board_number", "panel_serial", "serial"):
        cell = reader.cell(first, field)
        if cell:
            board[field] = cell
    tests: dict[str, tuple[bool, list[Measurement], str | None]] = {}
    for line, row in rows:
        if len(row) < reader.width:
            raise ParseError(f"row has {len(row)} fields, the mapping needs {reader.width}", line)
        name = reader.cell(row, "test") or ""
        if not name:
            raise ParseError("row without a test name", line)
        unit = reader.cell(row, "unit")
        value, symbol = reader.number(reader.cell(row, "value"), unit, line, "value")
        raw_value = reader.cell(row, "value")
        low, _ = reader.number(reader.cell(row, "low"), unit, line, "low limit")
        high, _ = reader.number(reader.cell(row, "high"), unit, line, "high limit")
        nominal, _ = reader.number(reader.cell(row, "nominal"), unit, line, "nominal")
        raw = reader.cell(row, "test_result")
        if raw is not None:
            result = reader.verdict(raw)
        elif value is not None and (low is not None or high is not None):
            result = "pass" if (low is None or value >= low) and (high is None or value <= high) else "fail"
        else:
            result = "pass"
        measurement = Measurement(
            reader.cell(row, "measurement") or name, value if value is not None else (raw_value or None),
            symbol if symbol is not None else (unit or None), low, high, nominal, result,
        )
        ok, measurements, first_raw = tests.get(name, (True, [], raw))
        measurements.append(measurement)
        tests[name] = (ok and result == "pass", measurements, first_raw if result == "pass" else raw)
    steps = tuple(TestStep(n, "pass" if ok else "fail", tuple(ms), r) for n, (ok, ms, r) in tests.items())
    raw_result = board.get("result")
    if raw_result:
        result = reader.verdict(raw_result)
    else:
        raw_result = "derived"
        result = "fail" if any(s.result != "pass" for s in steps) else "pass"
    number = board.get("board_number")
    return TestedBoard(
        serial=board["serial"], result=result, raw_result=raw_result, test_method="fct",
        program=board.get("program"), program_revision=board.get("program_revision"),
        tester=board.get("tester"), operator=board.get("operator"),
        started=reader.date(board.get("started"), first_line), ended=reader.date(board.get("ended"), first_line),
        board_number=int(number) if number and number.isdigit() else None,
        panel_serial=board.get("panel_serial"), tests=steps,
    )


@register("delimited")
def parse(data: bytes, options: ParseOptions) -> list[TestedBoard]:
    mapping = options.delimited
    if mapping is None:
        raise ParseError("format delimited needs the `delimited:` column mapping in the config")
    text = options.decode(data)
    try:
        table = list(csv.reader(text.splitlines(), delimiter=mapping.separator, quotechar=mapping.quote, strict=True))
    except csv.Error as exc:
        raise ParseError(f"malformed delimited text: {exc}") from None
    if len(table) < mapping.header_row:
        raise ParseError(f"file has {len(table)} lines, the header row is line {mapping.header_row}")
    labels = {label.upper(): field for field, label in mapping.key_rows.items()}
    attrs: dict[str, str] = {}
    for row in table[: mapping.header_row - 1]:
        if len(row) >= 2 and (field := labels.get(row[0].strip().upper())) is not None:
            attrs[field] = row[1].strip()
    reader = _Reader(mapping, table[mapping.header_row - 1], mapping.header_row)
    groups: list[tuple[str, list[tuple[int, list[str]]]]] = []
    for number, row in enumerate(table[mapping.header_row:], start=mapping.header_row + 1):
        if not any(cell.strip() for cell in row):
            continue
        serial = reader.cell(row, "serial") or attrs.get("serial")
        if not serial:
            raise ParseError("row without a serial", number)
        if not groups or groups[-1][0] != serial:
            groups.append((serial, []))
        groups[-1][1].append((number, row))
    if not groups:
        raise ParseError("no measurement rows after the header row")
    return [_board(reader, {**attrs, "serial": serial}, rows) for serial, rows in groups]
