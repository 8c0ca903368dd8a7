"""Log set-up: one JSON event per line, redaction of secrets, rate-limited repeats, format choice."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from emsedge.config import LoggingConfig
from emsedge.logging import RepeatLimiter, choose_format, configure_logging, under_journal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, RepeatLimiter, Clock]]:
    stream = io.StringIO()
    limiter = configure_logging(LoggingConfig(format="json", level="debug"), stream=stream, repeat_window=60.0)
    clock = Clock()
    limiter.clock = clock
    yield stream, limiter, clock
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_emsedge", False)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_event_is_one_json_line_with_utc_millisecond_timestamp(captured: Any) -> None:
    stream, _, _ = captured
    structlog.get_logger("t").info("connected", equipment="reflow-1", detail="two\nlines")
    [line] = lines(stream)
    assert list(line)[:4] == ["timestamp", "level", "event", "equipment"]
    assert line["event"] == "connected"
    assert line["equipment"] == "reflow-1"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")
    assert len(line["timestamp"]) == len("2026-01-01T00:00:00.000Z")


def test_secrets_are_redacted_by_key_by_type_and_inside_urls(captured: Any) -> None:
    stream, _, _ = captured
    structlog.get_logger("t").info(
        "config", password="hunter2", api_token="abc", mqtt={"Passphrase": "p", "user": "u"},
        key=SecretStr("s3"), url="mqtts://gw:topsecret@broker:8883", urls=["mqtt://a:b@h:1883"],
    )
    raw = stream.getvalue()
    for secret in ("hunter2", "abc", '"p"', "s3", "topsecret", "a:b@"):
        assert secret not in raw
    [line] = lines(stream)
    assert line["password"] == line["api_token"] == line["key"] == "***"
    assert line["mqtt"] == {"Passphrase": "***", "user": "u"}
    assert line["url"] == "mqtts://gw:***@broker:8883"


def test_identical_errors_are_logged_once_then_summarised_with_a_count(captured: Any) -> None:
    stream, _, clock = captured
    log = structlog.get_logger("t")
    for _ in range(50):
        log.warning("cannot connect", equipment="aoi-1", error="connection refused")
    log.warning("cannot connect", equipment="spi-1", error="connection refused")  # other equipment: own key
    assert [(x["event"], x["equipment"]) for x in lines(stream)] == [
        ("cannot connect", "aoi-1"), ("cannot connect", "spi-1")
    ]
    clock.now += 61
    log.info("something else")
    summary = [x for x in lines(stream) if x.get("repeats")]
    assert len(summary) == 1
    assert summary[0]["equipment"] == "aoi-1"
    assert summary[0]["repeats"] == 49
    assert summary[0]["error"] == "connection refused"
    assert summary[0]["level"] == "warning"


def test_a_different_error_is_not_suppressed_and_info_lines_never_are(captured: Any) -> None:
    stream, _, _ = captured
    log = structlog.get_logger("t")
    log.error("poll failed", equipment="x", error="timeout")
    log.error("poll failed", equipment="x", error="illegal address")
    for _ in range(3):
        log.info("connected", equipment="x")
    assert len(lines(stream)) == 5


def test_a_reload_refused_for_three_problems_logs_all_three(captured: Any) -> None:
    stream, _, _ = captured
    log = structlog.get_logger("emsedge.runtime")
    problems = [
        "gw.yaml:3:3: mqtt.url: 'mqtt://h:99999' has a port out of range",
        "gw.yaml:5:3: buffer.max_bytes: 0 bytes cannot hold one record",
        "gw.yaml:9:5: equipment[0].poll_interval: must be longer than zero",
    ]
    for problem in problems:  # as runtime.reload logs them
        log.error("reload refused: config invalid, old config stays in force", problem=problem)
    log.error("reload refused: config invalid, old config stays in force", problem=problems[0])  # a repeat
    assert [x["problem"] for x in lines(stream)] == problems


def test_unprocessable_values_of_different_signals_are_each_logged(captured: Any) -> None:
    stream, _, _ = captured
    log = structlog.get_logger("emsedge.buffer")
    for signal in ("label", "recipe", "label"):
        log.error("record_unprocessable", equipment="opcua-1", signal=signal, reason="integer outside 64 bits")
    assert [x["signal"] for x in lines(stream)] == ["label", "recipe"]


def test_flush_reports_pending_counts_at_shutdown(captured: Any) -> None:
    stream, limiter, _ = captured
    for _ in range(3):
        structlog.get_logger("t").error("publish failed", error="not authorised")
    limiter.flush()
    assert lines(stream)[-1]["repeats"] == 2


def test_library_log_records_go_through_the_same_json_and_rate_limit(captured: Any) -> None:
    stream, limiter, _ = captured
    for _ in range(5):
        logging.getLogger("pymodbus.client").error("Connection to (10.0.0.5, 502) failed")
    logging.getLogger("pymodbus.client").info("chatter")  # libraries are held at WARNING
    [line] = lines(stream)
    assert line["event"] == "Connection to (10.0.0.5, 502) failed"
    assert line["logger"] == "pymodbus.client"
    limiter.flush()
    summary = lines(stream)[-1]
    assert (summary["event"], summary["logger"], summary["repeats"]) == (line["event"], "pymodbus.client", 4)


@pytest.mark.parametrize(
    ("fmt", "tty", "env", "expected"),
    [
        ("auto", True, {}, "console"),
        ("auto", False, {}, "json"),
        ("auto", True, {"INVOCATION_ID": "abc"}, "json"),
        ("auto", True, {"JOURNAL_STREAM": "8:1234"}, "json"),
        ("auto", True, {"container": "docker"}, "json"),
        ("console", False, {}, "console"),
        ("json", True, {}, "json"),
    ],
)
def test_format_is_console_only_on_a_terminal_outside_systemd_and_containers(
    fmt: str, tty: bool, env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("emsedge.logging.in_container", lambda: False)

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert choose_format(LoggingConfig(format=fmt), Stream(), env) == expected  # type: ignore[arg-type]


def test_under_journald_lines_carry_a_syslog_priority_prefix(tmp_path: Path) -> None:
    target = tmp_path / "journal"
    with target.open("w+") as stream:
        st = target.stat()
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(stream, env)
        configure_logging(LoggingConfig(format="json"), stream=stream, environ=env)
        try:
            structlog.get_logger("t").error("buffer unwritable", error="disk full")
        finally:
            structlog.reset_defaults()
            root = logging.getLogger()
            for handler in [h for h in root.handlers if getattr(h, "_emsedge", False)]:
                root.removeHandler(handler)
        stream.seek(0)
        line = stream.read()
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["event"] == "buffer unwritable"
