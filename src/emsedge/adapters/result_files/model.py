"""What a parser returns: one `TestedBoard` per board in a result file, with its tests and measurements.

Plain frozen dataclasses, not pydantic models: a backlog of thousands of files holds hundreds of thousands
of measurements, and a parser's output is already checked by the parser. `event_fields()` turns a board
into the fields of one `unit_tested` event (the wire format is documented in docs/mqtt-contract.md).

Times: a parser returns `datetime`s as the file wrote them. A naive datetime is tester-local time and is
converted with the equipment's `timezone` (DST: an ambiguous wall time is read as its first occurrence,
a non-existent one is shifted forward, both the `zoneinfo` rules); an aware one is converted as it is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Final, Literal

from emsedge.schema import utc_iso

Result = Literal["pass", "fail", "aborted", "error"]
"""The board verdict on the wire. `aborted`: the test stopped before a verdict (operator stop, board not
tested); `error`: the tester itself failed (runtime or system error), which says nothing about the board."""

TestMethod = Literal["ict", "fpt", "fct", "bst"]
RESULTS: tuple[Result, ...] = ("pass", "fail", "aborted", "error")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured value with its limits, in base SI units (`100.2K` ohm arrives as 100200.0, unit `Ohm`)."""

    name: str
    value: float | str | None
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    nominal: float | None = None
    result: Result | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": self.value, "unit": self.unit, "low": self.low, "high": self.high,
            "nominal": self.nominal, "result": self.result,
        }


@dataclass(frozen=True, slots=True)
class TestStep:
    """One test (an i3070 BLOCK, a GR228x designator, a CSV row group) and what it measured."""

    __test__ = False  # a domain name, not a pytest test class

    name: str
    result: Result
    measurements: tuple[Measurement, ...] = ()
    raw_result: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "result": self.result, "raw_result": self.raw_result,
            "measurements": [m.as_dict() for m in self.measurements],
        }


@dataclass(frozen=True, slots=True)
class TestedBoard:
    """One board's test run. A retest of the same serial is another `TestedBoard`, never merged."""

    __test__ = False  # a domain name, not a pytest test class

    serial: str
    result: Result
    raw_result: str
    test_method: TestMethod
    program: str | None = None
    program_revision: str | None = None
    tester: str | None = None
    operator: str | None = None
    started: datetime | None = None
    ended: datetime | None = None
    board_number: int | None = None
    panel_serial: str | None = None
    tests: tuple[TestStep, ...] = field(default=())

    @property
    def failed_tests(self) -> list[str]:
        return [t.name for t in self.tests if t.result != "pass"]

    @property
    def measurement_count(self) -> int:
        return sum(len(t.measurements) for t in self.tests)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """Where the boards came from: the file name (relative to the scanned folder) and its content hash."""

    file: str
    sha256: str
    size: int


RECORD_ID_NAMESPACE: Final = uuid.UUID("e0ea53eb-4716-5e89-8de2-d47297b64ec0")
"""uuid5 namespace of the message ids of file-derived events (never change it: MES de-duplicates by id)."""


def record_id(gateway: str, equipment: str, sha256: str, kind: str, index: int = 0) -> str:
    """The envelope `id` of one event derived from a result file: a uuid5 over who read it (gateway,
    equipment), what was read (the file's content hash), which event (`unit_tested`, `file_rejected`) and
    which board of the file. The same file content always yields the same ids, so when a crash between the
    durable emit and the ledger write makes the gateway emit a file's events again, the buffer recognises
    the `id`s and suppresses the second copy (`emitted_ids`): MES receives each result once."""
    return str(uuid.uuid5(RECORD_ID_NAMESPACE, f"{gateway}/{equipment}/{sha256}/{kind}/{index}"))


def to_utc(value: datetime | None, tz: tzinfo) -> str | None:
    """Tester-local (naive) or aware time -> UTC ISO-8601 with milliseconds and `Z`; None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return utc_iso(value.timestamp())


def event_fields(board: TestedBoard, source: SourceFile, index: int, tz: tzinfo) -> dict[str, Any]:
    """The fields of one `unit_tested` event. `source.board_index` (0-based position in the file) with
    `source.sha256` names this result uniquely, so MES can recognise a redelivery even across a restart."""
    failed = board.failed_tests
    return {
        "serial": board.serial,
        "result": board.result,
        "raw_result": board.raw_result,
        "test_method": board.test_method,
        "program": board.program,
        "program_revision": board.program_revision,
        "tester": board.tester,
        "operator": board.operator,
        "started": to_utc(board.started, tz),
        "ended": to_utc(board.ended, tz),
        "board_number": board.board_number,
        "panel_serial": board.panel_serial,
        "tests": [t.as_dict() for t in board.tests],
        "failed_tests": failed,
        # the contract's existing unit_tested field: what failed, one entry per failed test
        "defects": [{"test": name, "code": "test_failed"} for name in failed],
        "source": {"file": source.file, "sha256": source.sha256, "board_index": index},
    }
