"""Normalisation between an adapter and the buffer, per piece of equipment.

Adapters report what the machine says; this step turns it into what MES cares about:

* signals flagged `event: station_state` leave the telemetry and become `station_state_changed` events
  (SEMI E58 code and name, the previous state and how long it lasted) whenever the mapped state changes;
* configured `triggers` (emsedge.triggers) add events with a snapshot of named signals when a trigger
  signal changes, e.g. a board-exit serial register becomes `unit_processed` with the zone profile;
* `emsedge.report` then rounds floats and, with `publish: on_change`, keeps only changes and snapshots.

Invariants:
* Records keep their order; the events a batch causes follow that batch's telemetry.
* The input is never modified: a telemetry record that loses its state readings is a new `Record` with a
  new body, so the trigger engine sees every reading the adapter reported, state signals included (a
  trigger on, or an `include` of, a `station_state` signal works whatever else shares its poll).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from emsedge.config import EquipmentBase, SignalCommon
from emsedge.report import Reporter
from emsedge.schema import EventType, Quality, Record, event, state_name

if TYPE_CHECKING:
    from emsedge.triggers import TriggerEngine

log = structlog.get_logger("emsedge.normalise")


class Normaliser:
    def __init__(self, equipment: EquipmentBase) -> None:
        self.equipment = equipment
        self._state_signals = {s.name: s for s in equipment.configured_signals() if s.event == "station_state"}
        # signal -> (E58 code or None, monotonic time it began)
        self._states: dict[str, tuple[int | None, float]] = {}
        self._unmapped_logged: set[tuple[str, str]] = set()
        self._triggers: TriggerEngine | None = None
        self._reporter = Reporter(equipment)
        if equipment.triggers:
            from emsedge.triggers import TriggerEngine  # noqa: PLC0415 - only configs with triggers need it

            self._triggers = TriggerEngine(equipment)

    def process(self, records: Sequence[Record]) -> list[Record]:
        """The records to buffer for `records` (which are not modified): telemetry, then the events."""
        out: list[Record] = []
        for record in records:
            if record.kind == "telemetry" and self._state_signals:
                out.extend(self._split_states(record))
            else:
                out.append(record)
        if self._triggers is not None:
            out.extend(self._triggers.process(records))
        return self._reporter.process(out)  # triggers saw every reading; MES gets changes and snapshots

    def _split_states(self, record: Record) -> list[Record]:
        events: list[Record] = []
        kept: list[dict[str, Any]] = []
        for r in record.body.get("readings", []):
            spec = self._state_signals.get(r["signal"])
            if spec is None:
                kept.append(r)
            elif r.get("quality") == Quality.GOOD and r.get("value") is not None:
                ev = self._state_change(spec, r)
                if ev is not None:
                    events.append(ev)
        if not kept:
            return events
        if len(kept) == len(record.body.get("readings", ())):
            return [record, *events]
        body = {**record.body, "readings": kept}
        return [Record(record.kind, record.equipment, record.equipment_type, record.ts, body), *events]

    def _state_change(self, spec: SignalCommon, r: dict[str, Any]) -> Record | None:
        raw = r["value"]
        code = self._map_state(spec, raw)
        now = time.monotonic()
        previous = self._states.get(spec.name)
        if previous is not None and previous[0] == code:
            return None
        self._states[spec.name] = (code, now)
        fields: dict[str, Any] = {
            "signal": spec.name,
            "state": code,
            "state_name": state_name(code) if code is not None else "unknown",
            "raw_value": raw,
        }
        if previous is not None:
            fields["old_state"] = previous[0]
            fields["old_state_name"] = state_name(previous[0]) if previous[0] is not None else "unknown"
            fields["old_state_duration_s"] = round(now - previous[1], 3)
        return event(
            self.equipment.id, self.equipment.type, EventType.STATION_STATE_CHANGED, r.get("ts"), **fields
        )

    def _map_state(self, spec: SignalCommon, raw: Any) -> int | None:
        mapping = spec.map or {}
        for key in (raw, str(raw)):
            if key in mapping:
                return mapping[key]
        if isinstance(raw, str) and raw.lstrip("-").isdigit() and int(raw) in mapping:
            return mapping[int(raw)]
        if isinstance(raw, float) and raw.is_integer() and int(raw) in mapping:
            return mapping[int(raw)]
        if not mapping and isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1000:
            return raw  # the machine already speaks E58 codes
        key = (spec.name, str(raw))
        if key not in self._unmapped_logged:
            self._unmapped_logged.add(key)
            log.warning(
                "state value not in map", equipment=self.equipment.id, signal=spec.name, value=raw,
                hint="add it to the signal's map: {value: E58 code}",
            )
        return None
