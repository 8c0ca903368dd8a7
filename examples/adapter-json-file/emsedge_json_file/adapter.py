"""The `json_file` adapter: a `PolledAdapter` that reads one JSON object per poll.

The gateway's scheduler owns the loop: it enters the adapter (`__aenter__`), calls `poll()` once per
`poll_interval` without drift, and on a transient `AdapterError` emits `connection_lost` with
`offline_records()`, leaves the adapter, backs off and enters it again. So this file only says how to read
the file once, and which faults a retry can fix.

Failure behaviour:
* the file is missing, unreadable, not JSON or not an object -> transient `AdapterError` (the program
  that writes it may be restarting, or caught mid-write: write a temporary file and rename it over);
* the path is a directory -> permanent `AdapterError` (a config fault; the machine is marked failed);
* a key missing from the file -> that reading has quality `bad`, status `missing`; the others are good.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Self

import anyio

from emsedge.adapters.base import AdapterContext
from emsedge.errors import AdapterError
from emsedge.schema import Quality, Record, reading, telemetry, utc_iso
from emsedge_json_file.config import JsonFileEquipment, JsonFileSignal

_MISSING = object()


class JsonFileAdapter:
    """Reads `config.path` and returns one telemetry record with a reading per configured signal."""

    def __init__(self, config: JsonFileEquipment, ctx: AdapterContext) -> None:
        self.config = config
        self.ctx = ctx

    async def __aenter__(self) -> Self:
        await self._read()  # "connected" means the file is there and holds an object
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self) -> Sequence[Record]:
        document = await self._read()
        ts = utc_iso()
        return [telemetry(self.config.id, self.config.type, [self._reading(s, document, ts) for s in
                                                             self.config.signals], ts)]

    def offline_records(self, reason: str) -> Sequence[Record]:
        ts = utc_iso()
        readings = [reading(s.name, None, unit=s.unit, quality=Quality.BAD, ts=ts, status=reason)
                    for s in self.config.signals]
        return [telemetry(self.config.id, self.config.type, readings, ts)]

    async def read_once(self) -> list[dict[str, Any]]:
        """`check-config --online`: read the file once (the `ReadsOnce` capability)."""
        async with self:
            records = await self.poll()
        return list(records[0].body["readings"])

    async def _read(self) -> dict[str, Any]:
        path = self.config.path
        try:
            with anyio.fail_after(self.config.timeout):
                text = await anyio.Path(path).read_text(encoding="utf-8")
        except IsADirectoryError:
            raise AdapterError(f"{path} is a directory, not a JSON file", transient=False) from None
        except TimeoutError:
            raise AdapterError(f"reading {path} took longer than {self.config.timeout:g}s") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AdapterError(f"cannot read {path}: {exc}") from None
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise AdapterError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise AdapterError(f"{path} holds a JSON {type(document).__name__}, not an object of values")
        return document

    @staticmethod
    def _reading(signal: JsonFileSignal, document: dict[str, Any], ts: str) -> dict[str, Any]:
        value: Any = document
        for part in signal.path:
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            return reading(signal.name, None, unit=signal.unit, quality=Quality.BAD, ts=ts, status="missing")
        return reading(signal.name, value, unit=signal.unit, ts=ts)
