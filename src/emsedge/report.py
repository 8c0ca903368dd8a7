"""Report by exception: which readings go to MES, and with how many digits.

Per equipment (`publish:`, `deadband:`, `precision:`, `snapshot_interval:`) with per-signal overrides:

* `precision` rounds float values (decimal places or significant digits) for every publish mode, so
  float32 noise digits (247.0500030517578) never reach the wire;
* `publish: on_change` sends a reading only when its quality changed, a non-number changed, or a number
  moved beyond the `deadband` (absolute, or percent of the last *reported* value, so slow drift is still
  reported once it adds up);
* every `snapshot_interval` (and on the first batch after start) one telemetry message carries the latest
  value of every signal seen so far, so a subscriber that joins late and a restarted gateway (whose
  memory of "last reported" is gone) still see every value within one interval.

Invariants: the records it is given are never mutated (new records and reading dicts are built); events
pass through untouched and in order; a telemetry record whose readings were all suppressed is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from emsedge.config import Deadband, EquipmentBase, Precision, PublishMode
from emsedge.schema import Record, telemetry


@dataclass(frozen=True, slots=True)
class _SignalPolicy:
    publish: PublishMode
    deadband: Deadband | None
    precision: Precision | None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reporter:
    """Filters and rounds the telemetry of one piece of equipment (see the module docstring)."""

    def __init__(self, equipment: EquipmentBase, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.equipment = equipment
        self._clock = clock
        self._default = _SignalPolicy(equipment.publish, equipment.deadband, equipment.precision)
        self._policies: dict[str, _SignalPolicy] = {}
        for s in equipment.configured_signals():
            deadband = getattr(s, "deadband", None)
            self._policies[s.name] = _SignalPolicy(
                s.publish or equipment.publish,
                deadband if isinstance(deadband, Deadband) else equipment.deadband,
                s.precision or equipment.precision,
            )
        self.on_change = equipment.publish == "on_change" or any(
            p.publish == "on_change" for p in self._policies.values()
        )
        self.active = self.on_change or any(p.precision for p in [self._default, *self._policies.values()])
        self._reported: dict[str, tuple[Any, str]] = {}  # signal -> (value, quality) last sent
        self._latest: dict[str, dict[str, Any]] = {}  # signal -> latest reading (rounded), sent or not
        self._next_snapshot: float | None = None

    def process(self, records: Sequence[Record]) -> list[Record]:
        if not self.active:
            return list(records)
        out: list[Record] = []
        for record in records:
            if record.kind != "telemetry":
                out.append(record)
                continue
            kept = self._filter(record)
            if kept is not None:
                out.append(kept)
        return out

    def _policy(self, signal: str) -> _SignalPolicy:
        return self._policies.get(signal, self._default)

    def _filter(self, record: Record) -> Record | None:
        readings: list[dict[str, Any]] = []
        for given in record.body.get("readings", []):
            policy = self._policy(given.get("signal", ""))
            value = given.get("value")
            if policy.precision is not None and isinstance(value, float):
                readings.append({**given, "value": policy.precision.apply(value)})
            else:
                readings.append(given)
        if not self.on_change:
            return _with_readings(record, readings)
        for r in readings:
            self._latest[r["signal"]] = r
        now = self._clock()
        if self._next_snapshot is None or now >= self._next_snapshot:
            self._next_snapshot = now + self.equipment.snapshot_interval
            snapshot = list(self._latest.values())
            for r in snapshot:
                self._reported[r["signal"]] = (r.get("value"), str(r.get("quality")))
            return telemetry(record.equipment, record.equipment_type, snapshot, record.ts)
        changed = [r for r in readings if self._changed(r)]
        for r in changed:
            self._reported[r["signal"]] = (r.get("value"), str(r.get("quality")))
        return _with_readings(record, changed) if changed else None

    def _changed(self, r: dict[str, Any]) -> bool:
        policy = self._policy(r["signal"])
        if policy.publish == "always":
            return True
        last = self._reported.get(r["signal"])
        value, quality = r.get("value"), str(r.get("quality"))
        if last is None or last[1] != quality:
            return True
        if isinstance(value, int | float) and _is_number(value) and _is_number(last[0]) and policy.deadband:
            return policy.deadband.exceeded(float(last[0]), float(value))
        return bool(value != last[0])


def _with_readings(record: Record, readings: list[dict[str, Any]]) -> Record:
    body = {**record.body, "readings": readings}
    return Record(record.kind, record.equipment, record.equipment_type, record.ts, body)


__all__ = ["Reporter"]
