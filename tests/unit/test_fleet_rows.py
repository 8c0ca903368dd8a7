"""`emsedge fleet`'s judgement of retained statuses, on an injected clock: online, stale, offline, losing data
(with and without a baseline), unreadable and missing lines, and the exit status each gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emsedge.fleet import (
    EX_LOSING_DATA,
    EX_OFFLINE,
    EX_OK,
    EX_UNREACHABLE,
    as_json,
    assess,
    exit_code,
    load_baseline,
    render_table,
    status_filters,
)

NOW = datetime(2026, 11, 24, 10, 15, 0, tzinfo=UTC).timestamp()
PREFIX = "ems/plant-a"


def ts(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def status(line: str, state: str = "online", ago: float = 1.0, **fields: Any) -> tuple[str, bytes]:
    body = {"schema": "emsedge/status@1", "gateway": f"gw-{line}", "state": state, "ts": ts(ago), "version": "1.2.0",
            **({"backlog": 0, "backlog_oldest_age_s": 0.0, "dropped_total": 0, "status_interval_s": 10.0,
                "equipment_total": 4, "equipment_connected": 4} if state == "online" else {}), **fields}
    return f"{PREFIX}/smt/{line}/_gateway/status", json.dumps(body).encode()


def test_status_filters_reach_a_line_prefix_zero_to_depth_levels_below_the_prefix() -> None:
    assert status_filters("ems/plant-a", 2) == [
        "ems/plant-a/_gateway/status", "ems/plant-a/+/_gateway/status", "ems/plant-a/+/+/_gateway/status",
    ]


def test_every_line_online_and_without_loss_is_exit_0() -> None:
    rows = assess(dict([status("line-1"), status("line-2")]), PREFIX, now=NOW)
    assert [(r.line, r.state, r.online) for r in rows] == [
        ("smt/line-1", "online", True), ("smt/line-2", "online", True),
    ]
    assert exit_code(rows) == EX_OK
    assert (rows[0].equipment_connected, rows[0].equipment_total, rows[0].last_seen_age_s) == (4, 4, 1.0)


def test_an_online_status_older_than_three_status_intervals_is_stale_and_counts_as_offline() -> None:
    rows = assess(dict([status("line-1", ago=29), status("line-2", ago=31)]), PREFIX, now=NOW)
    assert [r.state for r in rows] == ["online", "stale"]
    assert exit_code(rows) == EX_OFFLINE
    assert [r.state for r in assess(dict([status("line-2", ago=31)]), PREFIX, now=NOW, stale_after=60)] == ["online"]


def test_an_offline_line_wins_over_a_line_losing_data() -> None:
    losing = status("line-1", dropped_total=5)
    rows = assess(dict([losing]), PREFIX, now=NOW)
    assert rows[0].losing_data and rows[0].online
    assert exit_code(rows) == EX_LOSING_DATA
    rows = assess(dict([losing, status("line-2", "offline", ago=3600, cause="connection_lost")]), PREFIX, now=NOW)
    assert exit_code(rows) == EX_OFFLINE
    assert "offline (connection_lost)" in render_table(rows)


def test_with_a_baseline_only_loss_since_it_was_taken_counts(tmp_path: Path) -> None:
    before = assess(dict([status("line-1", dropped_total=5)]), PREFIX, now=NOW)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(as_json(before, "mqtt://b:1883", PREFIX, exit_code(before))))
    baseline = load_baseline(path)
    assert baseline == {"smt/line-1": 5}
    assert exit_code(assess(dict([status("line-1", dropped_total=5)]), PREFIX, now=NOW, baseline=baseline)) == EX_OK
    later = assess(dict([status("line-1", dropped_total=7)]), PREFIX, now=NOW, baseline=baseline)
    assert exit_code(later) == EX_LOSING_DATA
    assert later[0].problems == ["lost 2 record(s) since the baseline (5)"]


def test_an_unreadable_status_and_missing_lines_count_as_offline_and_no_line_at_all_is_exit_1() -> None:
    rows = assess({f"{PREFIX}/smt/x/_gateway/status": b"not json"}, PREFIX, now=NOW)
    assert rows[0].state == "unreadable" and exit_code(rows) == EX_OFFLINE
    rows = assess(dict([status("line-1")]), PREFIX, now=NOW, expect=3)
    assert [r.state for r in rows] == ["online", "missing", "missing"]
    assert exit_code(rows) == EX_OFFLINE
    assert exit_code(assess({}, PREFIX, now=NOW)) == EX_UNREACHABLE


def test_a_status_from_before_the_fleet_fields_is_read_with_the_old_refresh_interval() -> None:
    old = {"schema": "emsedge/status@1", "gateway": "gw", "state": "online", "ts": ts(20), "backlog": 3}
    rows = assess({f"{PREFIX}/_gateway/status": json.dumps(old).encode()}, PREFIX, now=NOW)
    assert (rows[0].line, rows[0].state, rows[0].equipment_total, rows[0].dropped_total) == (".", "online", None, None)
    assert "-/-" not in render_table(rows)
