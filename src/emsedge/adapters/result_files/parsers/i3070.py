"""Keysight/Agilent i3070 log records (Keysight's "log record format", doc 9018-07549).

Nested brace records `{@TAG|field|field... <children> }`. A log holds one `@BATCH` per board (a panel log
holds several), each with one `@BTEST` (board serial, status, start/end as YYMMDDhhmmss tester-local,
board number, parent panel id), whose children are test records:

* `@BLOCK|designator|status` with analog results `@A-RES|status|value(|subtest)` (and A-CAP, A-DIO,
  A-FUS, A-IND, A-JUM, A-MEA, A-NFE, A-PFE, A-NPN, A-PNP, A-POT, A-SWI, A-ZEN) whose limits are a child
  `@LIM2|high|low` or `@LIM3|nominal|high|low`, and digital results `@D-T|status|substatus|vector|pins|designator`;
* `@TS|status|shorts|opens|phantoms(|designator)` shorts, `@PF|designator|status|pins` pins,
  `@BS-CON|designator|status|shorts|opens` boundary scan, `@TJET`/`@CCHK`/`@PCHK`/`@PRB|status|pins|designator`;
* `@RPT` report text and user-defined tags, which are skipped.

Status `0`/`00` is a pass. BTEST status: 0 pass, 80 runtime error (`error`), 81/82 stopped (`aborted`),
13 board X'd out (`aborted`: not tested), anything else a failure class (`fail`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from emsedge.adapters.result_files.model import Measurement, Result, TestedBoard, TestStep
from emsedge.adapters.result_files.parsers import ParseError, ParseOptions, register

_TOKEN = re.compile(r"\{([^{}]*)|\}|[^{}]+")
_ANALOG_UNITS: dict[str, str | None] = {
    "A-CAP": "F", "A-RES": "Ohm", "A-JUM": "Ohm", "A-FUS": "Ohm", "A-POT": "Ohm", "A-SWI": "Ohm",
    "A-IND": "H", "A-DIO": "V", "A-ZEN": "V", "A-MEA": None, "A-NPN": None, "A-PNP": None,
    "A-NFE": None, "A-PFE": None,
}
_STATUS_DESIGNATOR_LAST = {"TJET", "CCHK", "PCHK", "PRB"}
MAX_DEPTH = 64
MAX_DURATION_S = 7 * 24 * 3600


@dataclass(slots=True)
class Node:
    tag: str
    fields: list[str]
    line: int
    children: list[Node] = field(default_factory=list)


def records(text: str) -> list[Node]:
    """The record tree. Braces must balance; text between children (line breaks) is ignored.

    One regex match per record opening (with its fields) or closing; line numbers are counted only up to
    where a record opens, with `str.count` (this loop is the parser's hot path)."""
    roots: list[Node] = []
    stack: list[Node] = []
    line, counted = 1, 0
    for m in _TOKEN.finditer(text):
        start = m.start()
        kind = text[start]
        if kind == "{":
            line += text.count("\n", counted, start)
            counted = start
            if len(stack) >= MAX_DEPTH:
                raise ParseError(f"records nested deeper than {MAX_DEPTH}", line)
            head = m.group(1).rstrip("\r\n")
            tag, *fields = head.split("|")
            tag = tag.split("\\", 1)[0].strip()
            if len(tag) < 2 or tag[0] != "@":
                raise ParseError(f"record does not start with '@TAG': {head[:40]!r}", line)
            node = Node(tag[1:], [f.strip() for f in fields], line)
            (stack[-1].children if stack else roots).append(node)
            stack.append(node)
        elif kind == "}":
            if not stack:
                raise ParseError("'}' without an open record", line + text.count("\n", counted, start))
            stack.pop()
        elif not stack and m.group().strip():
            line += text.count("\n", counted, start)
            raise ParseError(f"text outside any record: {m.group().strip()[:40]!r}", line)
    if stack:
        raise ParseError(f"record @{stack[-1].tag} opened here is never closed (truncated file?)", stack[-1].line)
    return roots


def _field(node: Node, index: int) -> str:
    fields = node.fields
    return fields[index] if index < len(fields) else ""


def _int(node: Node, index: int, what: str) -> int:
    text = _field(node, index)
    try:
        return int(text)
    except ValueError:
        raise ParseError(f"@{node.tag} {what} {text!r} is not a number", node.line) from None


def _float(node: Node, index: int, what: str) -> float:
    text = _field(node, index)
    try:
        value = float(text)
    except ValueError:
        raise ParseError(f"@{node.tag} {what} {text!r} is not a number", node.line) from None
    if not math.isfinite(value):
        raise ParseError(f"@{node.tag} {what} {text!r} is not a finite number", node.line)
    return value


def _time(node: Node, index: int, what: str) -> datetime | None:
    text = _field(node, index)
    if not text:
        return None
    try:
        if len(text) != 12 or not text.isdigit():
            raise ValueError(text)
        return datetime.strptime(text, "%y%m%d%H%M%S")
    except ValueError:
        raise ParseError(f"@{node.tag} {what} {text!r} is not YYMMDDhhmmss", node.line) from None


def _passed(status: int) -> Result:
    return "pass" if status == 0 else "fail"


def _board_result(status: int) -> Result:
    if status == 0:
        return "pass"
    if status == 80:
        return "error"
    if status in (13, 81, 82):
        return "aborted"
    return "fail"


def _analog(node: Node, block: str) -> Measurement:
    status = _int(node, 0, "status")
    value = _float(node, 1, "value")
    name = _field(node, 2) or block
    low = high = nominal = None
    for child in node.children:
        if child.tag == "LIM2":
            high, low = _float(child, 0, "high limit"), _float(child, 1, "low limit")
        elif child.tag == "LIM3":
            nominal = _float(child, 0, "nominal")
            high, low = _float(child, 1, "high limit"), _float(child, 2, "low limit")
    return Measurement(name, value, _ANALOG_UNITS[node.tag], low, high, nominal, _passed(status))


def _block(node: Node) -> TestStep:
    name = _field(node, 0)
    if not name:
        raise ParseError("@BLOCK without a designator", node.line)
    status = _int(node, 1, "status")
    measurements: list[Measurement] = []
    for child in node.children:
        if child.tag in _ANALOG_UNITS:
            measurements.append(_analog(child, name))
        elif child.tag == "D-T":
            measurements.append(
                Measurement(_field(child, 4) or name, None, None, result=_passed(_int(child, 0, "status")))
            )
    return TestStep(name, _passed(status), tuple(measurements), _field(node, 1))


def _other_test(node: Node) -> TestStep | None:
    if node.tag == "TS":
        status = _int(node, 0, "status")
        counts = tuple(
            Measurement(what, _int(node, i, what), None, result=_passed(status))
            for i, what in ((1, "shorts"), (2, "opens"), (3, "phantoms"))
        )
        return TestStep(_field(node, 4) or "shorts", _passed(status), counts, _field(node, 0))
    if node.tag == "PF":
        return TestStep(_field(node, 0) or "pins", _passed(_int(node, 1, "status")), (), _field(node, 1))
    if node.tag == "BS-CON":
        return TestStep(_field(node, 0) or "boundary_scan", _passed(_int(node, 1, "status")), (), _field(node, 1))
    if node.tag in _STATUS_DESIGNATOR_LAST:
        return TestStep(_field(node, 2) or node.tag.lower(), _passed(_int(node, 0, "status")), (), _field(node, 0))
    return None


def _board(btest: Node, batch: Node | None) -> TestedBoard:
    if len(btest.fields) < 12:
        raise ParseError(f"@BTEST has {len(btest.fields)} fields, expected at least 12", btest.line)
    if batch is not None and len(batch.fields) < 11:
        raise ParseError(f"@BATCH has {len(batch.fields)} fields, expected at least 11", batch.line)
    serial = _field(btest, 0)
    if not serial:
        raise ParseError("@BTEST without a board id (serial)", btest.line)
    status = _int(btest, 1, "test status")
    started = _time(btest, 2, "start")
    ended = _time(btest, 9, "end")
    if ended is None and started is not None and _field(btest, 3):
        duration = _int(btest, 3, "duration")
        if not 0 <= duration <= MAX_DURATION_S:
            raise ParseError(f"@BTEST duration {duration} s is not plausible", btest.line)
        ended = started + timedelta(seconds=duration)
    number = _field(btest, 11)
    tests: list[TestStep] = []
    for child in btest.children:
        if child.tag == "BLOCK":
            tests.append(_block(child))
        elif (step := _other_test(child)) is not None:
            tests.append(step)
    program = program_revision = tester = operator = None
    if batch is not None:
        program = _field(batch, 9) or _field(batch, 0) or None
        program_revision = _field(batch, 10) or _field(batch, 1) or None
        tester = _field(batch, 8) or None
        operator = _field(batch, 7) or None
    return TestedBoard(
        serial=serial,
        result=_board_result(status),
        raw_result=_field(btest, 1),
        test_method="ict",
        program=program,
        program_revision=program_revision,
        tester=tester,
        operator=operator,
        started=started,
        ended=ended,
        board_number=int(number) if number.isdigit() else None,
        panel_serial=_field(btest, 12) or None,
        tests=tuple(tests),
    )


@register("i3070")
def parse(data: bytes, options: ParseOptions) -> list[TestedBoard]:
    boards: list[TestedBoard] = []
    for root in records(options.decode(data)):
        if root.tag == "BATCH":
            btests = [c for c in root.children if c.tag == "BTEST"]
            if len(btests) != 1:
                raise ParseError(f"@BATCH holds {len(btests)} @BTEST records, expected one", root.line)
            boards.append(_board(btests[0], root))
        elif root.tag == "BTEST":
            boards.append(_board(root, None))
    if not boards:
        raise ParseError("no @BATCH/@BTEST record: not an i3070 log")
    return boards
