"""Value types shared by every part of the config: durations, sizes, backoff, the frozen model base.

Config is data (Vector's lesson): frozen models, `extra="forbid"`, a description on every field (it
feeds `emsedge config-schema` and the docs). Runtime state never lives on these objects.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`500ms`, `1s`, `2m`, `1h` or a bare number of seconds -> seconds as float."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 1s or 2m")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 500ms, 1s or 2m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    # The JSON Schema (emsedge config-schema) must accept what the YAML accepts: 500ms, 1s, 2m, or a number.
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$", "examples": ["500ms", "1s", "2m"]},
    ]}),
]
"""Seconds; written in YAML as 500ms, 1s, 2m, 1h or a number of seconds."""

Size = ByteSize
"""Bytes; written in YAML as 512MiB, 1GiB or a number of bytes."""


class ConfigModel(BaseModel):
    """Base of every config section: frozen, unknown keys refused (they are typos more often than not)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Backoff(ConfigModel):
    """Reconnect delays, shared by the broker link and every piece of equipment."""

    initial: Duration = Field(0.5, description="First reconnect delay.")
    max: Duration = Field(30.0, description="Reconnect delays double up to this cap (with jitter).")


def did_you_mean(word: str, options: Iterable[object]) -> str:
    """`; did you mean 'x'?` for the closest option, or an empty string."""
    matches = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""


__all__ = ["Backoff", "ConfigModel", "Duration", "Size", "did_you_mean", "parse_duration"]
