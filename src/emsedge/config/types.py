"""Value types shared by every part of the config: durations, sizes, backoff, the frozen model base.

Config is data (Vector's lesson): frozen models, `extra="forbid"`, a description on every field (it
feeds `emsedge config-schema` and the docs). Runtime state never lives on these objects.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_UNITS_REQUIRED: ContextVar[bool] = ContextVar("emsedge_units_required", default=False)


@contextmanager
def units_required() -> Iterator[None]:
    """While a config *file* is validated, a duration must carry its unit.

    A bare `poll_interval: 500` is ambiguous (500 ms or 500 s?), so a file must say which. Python code
    building models (`BufferConfig(linger=0.001)`) passes seconds as numbers and stays allowed.
    """
    token = _UNITS_REQUIRED.set(True)
    try:
        yield
    finally:
        _UNITS_REQUIRED.reset(token)


def validating_file() -> bool:
    """True while a config file is being validated (inside `units_required()`)."""
    return _UNITS_REQUIRED.get()


def _with_unit(number: float) -> str:
    """The most likely meaning of a bare number: 500 -> 500ms, 5 -> 5s, 0.5 -> 500ms."""
    if number >= 50 and float(number).is_integer():
        return f"{int(number)}ms"
    if 0 < abs(number) < 1:
        return f"{round(number * 1000, 3):g}ms"
    return f"{number:g}s"


def parse_duration(value: object, *, allow_zero: bool = True) -> float:
    """`500ms`, `1s`, `2m`, `1h` -> seconds as float. A bare number (seconds) only from Python code.

    With `allow_zero=False` (every period and timeout) zero is refused: a poll period of 0 spins.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 1s or 2m")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(value, int | float):
        number, unit = float(value), None
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        number, unit = float(m.group(1)), m.group(2)
    else:
        raise ValueError("expected a duration such as 500ms, 1s or 2m")
    if unit is None and _UNITS_REQUIRED.get():
        raise ValueError(
            f"a duration needs a unit (ms, s, m or h); did you mean {_with_unit(number)}?"
            if number > 0 else "a duration needs a unit (ms, s, m or h), e.g. 500ms or 1s"
        )
    seconds = number * _DURATION_UNITS[unit]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds == 0 and not allow_zero:
        raise ValueError("must be longer than zero (a period or timeout of 0 never waits)")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> the text a config file holds (`0.5` -> `500ms`, `30.0` -> `30s`); parses back exactly."""
    if 0 < seconds < 1:
        return _plain(seconds * 1000) + "ms"
    return _plain(seconds) + "s"


def _plain(number: float) -> str:
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _positive_duration(value: object) -> float:
    return parse_duration(value, allow_zero=False)


_DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)\s*$"
_POSITIVE_PATTERN = r"^\s*(?=[\d.]*[1-9])\d+(\.\d+)?\s*(ms|s|m|h)\s*$"

Duration = Annotated[
    float,
    BeforeValidator(_positive_duration),
    # Dumped as text with its unit, so a dumped config (and pydantic-settings' defaults) loads again.
    PlainSerializer(format_duration, return_type=str),
    # The JSON Schema (emsedge config-schema) accepts what a file may hold: a number with its unit.
    WithJsonSchema({"type": "string", "pattern": _POSITIVE_PATTERN, "examples": ["500ms", "1s", "2m"]}),
]
"""Seconds, more than zero; written in YAML as 500ms, 1s, 2m or 1h (the unit is required)."""

DurationOrZero = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _DURATION_PATTERN, "examples": ["0s", "500ms", "1s"]}),
]
"""Seconds, zero allowed (where 0 means "off" or "at once"); written with a unit like `Duration`."""


def _host_without_port(value: object) -> object:
    if isinstance(value, str):
        bracketed = value.startswith("[") and "]:" in value
        if bracketed or (value.count(":") == 1 and value.rpartition(":")[2].isdigit()):
            host, _, port = value.rpartition(":")
            raise ValueError(f"a host has no port in it; write host: {host.strip('[]')} and port: {port}")
        if not value.strip():
            raise ValueError("must not be empty")
    return value


Host = Annotated[str, BeforeValidator(_host_without_port)]
"""A host name or IP address (IPv6 without brackets); the port is a field of its own."""

Size = ByteSize
"""Bytes; written in YAML as 512MiB, 1GiB or a number of bytes."""


_SHARED_FIELD_SETS: dict[frozenset[str], set[str]] = {}
"""One `__pydantic_fields_set__` per distinct combination of fields given (see `ConfigModel.model_post_init`)."""


class ConfigModel(BaseModel):
    """Base of every config section: frozen, unknown keys refused (they are typos more often than not)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def model_post_init(self, context: object, /) -> None:
        """Share the set of fields given among models that were given the same ones.

        A set of five names is a 728-byte table, more than the rest of a signal's model: with 50k Modbus
        signals, 36 MB. A frozen model never adds to it (and pydantic's copies copy it), so one shared set
        per combination is safe; there are a handful of combinations in any config.
        """
        given = self.__pydantic_fields_set__
        shared = _SHARED_FIELD_SETS.setdefault(frozenset(given), given)
        if shared is not given:
            object.__setattr__(self, "__pydantic_fields_set__", shared)


class Backoff(ConfigModel):
    """Reconnect delays, shared by the broker link and every piece of equipment."""

    initial: Duration = Field(0.5, description="First reconnect delay.")
    max: Duration = Field(30.0, description="Reconnect delays double up to this cap (with jitter).")


def did_you_mean(word: str, options: Iterable[object]) -> str:
    """`; did you mean 'x'?` for the closest option, or an empty string."""
    matches = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""


__all__ = [
    "Backoff",
    "ConfigModel",
    "Duration",
    "DurationOrZero",
    "Host",
    "Size",
    "did_you_mean",
    "format_duration",
    "parse_duration",
    "units_required",
    "validating_file",
]
