"""structlog set-up: one event per line, secrets redacted, repeated errors rate-limited.

Format (`logging.format`): `json` (one JSON object per line: journald, Docker, log shippers) or `console`
(coloured key=value for a technician at a terminal). `auto` picks console only on a TTY that is not under
systemd (`JOURNAL_STREAM`/`INVOCATION_ID`) or in a container. Under journald each line also starts with an
sd-daemon `<N>` priority prefix, so `journalctl -p warning` works; journald strips it.

Library loggers (pymodbus, asyncua, paho) go through the same processors and renderer via the stdlib bridge.

Invariants:
* Redaction runs before rendering, on every event: any key containing password, secret, token or
  passphrase (any case, at any nesting depth), any `SecretStr`, and credentials inside URLs.
* Rate limiting applies to warnings and errors: identical (event, equipment, error or reason, problem,
  signal) within `window` seconds -> the first is logged, the rest are counted and reported once as the same event with
  `repeats=N` when the window is over (on the next log call, or at `flush()`). Info lines are never dropped.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from pydantic import SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from emsedge.config import LoggingConfig
from emsedge.schema import utc_iso

REDACTED = "***"
SECRET_KEY = re.compile(r"password|passwd|secret|token|passphrase", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)[^@/\s]+@")
REPEAT_WINDOW = 60.0
_MAX_KEYS = 1024
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}
_NOISY_LIBRARIES = ("asyncua", "pymodbus", "paho", "amqtt", "secsgem")


# ---------------------------------------------------------------------------------------------------
# Processors


def _redact_value(key: str | None, value: Any) -> Any:
    if key is not None and SECRET_KEY.search(key) and value is not None:
        return REDACTED
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, str):
        return URL_CREDENTIALS.sub(rf"\g<1>{REDACTED}@", value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(None, v) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace secret values by `***` (see the module docstring for what counts as secret)."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key if key != "event" else None, event_dict[key])
    return event_dict


class RepeatLimiter:
    """A processor that logs the first of identical warnings/errors per window and counts the rest."""

    def __init__(self, window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, ...], list[Any]] = {}  # key -> [window_start, suppressed, fields]
        self._lock = threading.Lock()  # stdlib handlers of library threads (paho) log from other threads
        self._emitting = threading.local()

    @staticmethod
    def key(event_dict: MutableMapping[str, Any]) -> tuple[str, ...]:
        error = event_dict.get("error", event_dict.get("reason", event_dict.get("exc_info", "")))
        return (
            str(event_dict.get("event", "")), str(event_dict.get("equipment", "")), str(error),
            str(event_dict.get("problem", "")), str(event_dict.get("signal", "")),
        )

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if not self.allow(event_dict, str(event_dict.get("level", method))):
            raise structlog.DropEvent
        return event_dict

    def allow(self, event_dict: MutableMapping[str, Any], level: str) -> bool:
        """False when this event repeats one already logged in the current window (it is counted)."""
        if getattr(self._emitting, "active", False):
            return True  # a summary we are emitting ourselves
        level = level.lower()
        now = self.clock()
        due = self._expire(now)
        drop = False
        if _SYSLOG_PRIORITY.get(level, 6) <= 4:
            key = self.key(event_dict)
            with self._lock:
                entry = self._seen.get(key)
                if entry is not None and now - entry[0] < self.window:
                    entry[1] += 1
                    drop = True
                else:
                    if len(self._seen) >= _MAX_KEYS:
                        self._seen.pop(next(iter(self._seen)))
                    self._seen[key] = [now, 0, dict(event_dict), level]
        self._emit(due)
        return not drop

    def _expire(self, now: float) -> list[list[Any]]:
        """Remove windows that are over; return those that suppressed something (their summaries are due)."""
        due = []
        with self._lock:
            for key in [k for k, e in self._seen.items() if now - e[0] >= self.window]:
                entry = self._seen.pop(key)
                if entry[1]:
                    due.append(entry)
        return due

    def flush(self) -> None:
        """Report every pending count now (at shutdown, and in tests)."""
        with self._lock:
            due = [e for e in self._seen.values() if e[1]]
            self._seen.clear()
        self._emit(due)

    def _emit(self, due: list[list[Any]]) -> None:
        if not due:
            return
        self._emitting.active = True
        try:
            for _start, count, fields, level in due:
                logger = structlog.get_logger(str(fields.get("logger_name", fields.get("logger", "emsedge"))))
                extra = {k: v for k, v in fields.items() if k not in _SUMMARY_SKIP}
                if "logger_name" in fields:  # a library's record: say whose
                    extra["logger"] = fields["logger_name"]
                method = level if level in ("warning", "error", "critical") else "warning"
                getattr(logger, method)(str(fields.get("event", "")), **extra, repeats=count, window_s=self.window)
        finally:
            self._emitting.active = False


_SUMMARY_SKIP = frozenset({"event", "level", "timestamp", "logger", "logger_name", "exc_info", "repeats", "window_s"})


class _RepeatFilter(logging.Filter):
    """The repeat limiter for stdlib (library) log records."""

    def __init__(self, limiter: RepeatLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {"event": record.getMessage(), "logger_name": record.name}
        return self.limiter.allow(fields, record.levelname)


_FIRST = ("timestamp", "level", "event", "equipment")


def order_keys(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """timestamp, level, event, equipment first: what a human scanning `journalctl` reads first."""
    head = {k: event_dict.pop(k) for k in _FIRST if k in event_dict}
    head.update(event_dict)
    return head


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("timestamp", utc_iso())
    return event_dict


class _JournalPriority:
    """Prefix rendered lines with `<N>` (sd-daemon priority) when stderr is the journal."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method)).lower()
        return f"<{_SYSLOG_PRIORITY.get(level, 6)}>" + str(self.renderer(logger, method, event_dict))


# ---------------------------------------------------------------------------------------------------
# Set-up


def under_journal(stream: TextIO, environ: MutableMapping[str, str] | None = None) -> bool:
    """True when `stream` is the journald stream systemd connected us to (`JOURNAL_STREAM=dev:inode`)."""
    env = os.environ if environ is None else environ
    raw = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in raw.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def choose_format(config: LoggingConfig, stream: TextIO, environ: MutableMapping[str, str] | None = None) -> str:
    if config.format != "auto":
        return config.format
    env = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", lambda: False)()
    if not isatty or env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID") or env.get("container") or in_container():
        return "json"
    return "console"


_limiter: RepeatLimiter | None = None


def configure_logging(
    config: LoggingConfig,
    *,
    stream: TextIO | None = None,
    environ: MutableMapping[str, str] | None = None,
    repeat_window: float = REPEAT_WINDOW,
) -> RepeatLimiter:
    """Configure structlog and the stdlib root logger. Idempotent; returns the repeat limiter."""
    global _limiter  # noqa: PLW0603 - logging is process-wide by nature; configured once by the CLI
    out = stream if stream is not None else sys.stderr
    fmt = choose_format(config, out, environ)
    limiter = RepeatLimiter(repeat_window)
    _limiter = limiter
    renderer: Processor
    if fmt == "json":
        json_renderer = structlog.processors.JSONRenderer(default=str)

        def render_json(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
            return str(json_renderer(logger, method, order_keys(logger, method, event_dict)))

        renderer = render_json
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)())
    if fmt == "json" and under_journal(out, environ):
        renderer = _JournalPriority(renderer)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        add_timestamp,
        redact_secrets,
        limiter,
    ]
    level = _LEVELS[config.level]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.addFilter(_RepeatFilter(limiter))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name, *shared[:-1], structlog.processors.format_exc_info
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_emsedge", False):
            root.removeHandler(old)
    handler._emsedge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY_LIBRARIES:  # their INFO chatter is per-request; keep their warnings and errors
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return limiter


def flush_repeats() -> None:
    """Report pending repeat counts; runs at interpreter exit, so held-back counts are never lost."""
    if _limiter is not None:
        with contextlib.suppress(Exception):  # the stream may be closed this late
            _limiter.flush()


atexit.register(flush_repeats)


__all__ = ["RepeatLimiter", "choose_format", "configure_logging", "flush_repeats", "redact_secrets"]
