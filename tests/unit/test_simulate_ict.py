"""The virtual ICT station writes i3070 logs the i3070 parser reads back to the same verdicts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from emsedge.adapters.result_files.model import SourceFile, event_fields
from emsedge.adapters.result_files.parsers import ParseOptions, parser_for
from emsedge.simulate.ict import IctStation


def test_every_log_parses_back_to_the_verdict_and_failures_it_was_written_with(tmp_path: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    station = IctStation(tmp_path, rng=random.Random(3), fail_rate=0.2, retest_rate=1.0, tester_zone=berlin)
    start = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    outcomes = [o for i in range(50) for o in station.test_board(f"PCB-{i:03d}", start + timedelta(minutes=i))]
    assert not (set(tmp_path.iterdir()) - {o.path for o in outcomes})  # no temporary files left behind
    failed = [o for o in outcomes if not o.passed]
    assert failed, "a 20 % fail rate over 50 boards fails some"
    assert len(outcomes) == 50 + len(failed)  # every failing board was retested once
    parse = parser_for("i3070")
    for outcome in outcomes:
        (board,) = parse(outcome.path.read_bytes(), ParseOptions())
        assert board.serial == outcome.serial
        assert board.result == ("pass" if outcome.passed else "fail")
        assert tuple(board.failed_tests) == outcome.failed
        assert board.measurement_count == len(station.components) + 3  # + shorts, opens, phantoms counts
    first = event_fields(parse(outcomes[0].path.read_bytes(), ParseOptions())[0], SourceFile("f", "x", 1), 0, berlin)
    assert first["started"] == "2026-07-01T08:00:00.000Z"  # written as Berlin wall time, read back as UTC


def test_a_retest_is_a_second_file_for_the_same_serial(tmp_path: Path) -> None:
    station = IctStation(tmp_path, rng=random.Random(0), fail_rate=1.0, retest_rate=1.0)
    first, retest = station.test_board("PCB-9", datetime(2026, 1, 1, tzinfo=UTC))
    assert (first.serial, first.passed, retest.serial, retest.passed) == ("PCB-9", False, "PCB-9", True)
    assert first.path != retest.path
