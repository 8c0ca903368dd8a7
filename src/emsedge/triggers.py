"""Triggered events: a signal change becomes an MES event carrying a snapshot of named signals.

Machines rarely announce "board X is done" in a protocol-level event. They expose a register or node
that changes when it happens: the reflow oven's board-exit serial, a "cycle complete" flag, the board
serial on the pick-and-place. A `Trigger` in the config names that signal (`on_change`), the event type
to emit, the signal holding the board serial, and the signals to snapshot (`include`):

    triggers:
      - {on_change: board_exit_serial, emit: unit_processed, serial: board_exit_serial,
         include: [zone1_top_actual, zone1_bottom_actual, conveyor_speed, o2_ppm]}

The engine works with every adapter because it only looks at the telemetry records adapters emit. It
keeps the latest reading of every signal of its equipment and, for each telemetry record, first takes in
all of the record's readings and then checks the triggers whose signal is in that record, so a snapshot
taken for a Modbus poll holds the values of that same poll.

Invariants:
* A trigger fires only on a good-quality, non-null value that differs from the previous good value of
  that signal. Bad or uncertain readings neither fire nor replace the previous good value.
* The first good value seen by this engine (gateway start) fires only when `skip_initial` is false: the
  machine held that value before the gateway looked, and a previous gateway run may have reported it.
* A lost connection does not forget the previous good value: when the link comes back with a different
  value (a board left during the outage), the trigger fires once for the latest value; when it comes back
  with the same value, nothing repeats. The field text "first value after (re)connect" therefore applies
  to a gateway start; within one run the comparison is exact.
* Events follow the telemetry record that caused them, in the order the changes were seen, and carry
  that reading's timestamp.

Fault signals: a trigger with `emit: fault_occurred` follows an alarm bit or alarm code. A change to a
truthy value emits `fault_occurred` with a new `fault_occurrence_id` and `fault_code` (from `fields`, else
the value for a code, else the signal name for a bit); a change away from it emits `fault_cleared` with
the same id (and, for a code changing to another code, a new `fault_occurred`). Use `skip_initial: false`
so a fault already active when the gateway starts is reported.

Fault text: `text` from the trigger's `fields`, else the value of the first `include` signal whose name
ends in `text` or `message` (e.g. a pick-and-place `alarm_text` register), so the text is in the event's
`text` and not only inside `values`.

Missed boards: a trigger with a `counter` (a board counter of the same boards, e.g. `board_exit_count`)
compares the counter's movement with the events it fired. When the counter moved by more than that (a
board left while the link was down and the serial register already shows the next one), it emits
`units_missed` with the count, the counter values and the serials seen before and after the gap. A counter
that goes backwards (machine restart) resets the comparison; events seen ahead of the counter (the serial
register updated one poll before the counter) are carried over, not counted as extra.

Event body (docs/mqtt-contract.md): `{type: <emit>, serial, trigger: <signal>, value, previous,
values: {name: {value, unit}}, **fields}`. `values` holds the latest good value of each `include`
signal; when none has been seen or the latest reading is not good, its value is null and it carries
`quality` (bad or uncertain). Constant `fields` never override the computed keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emsedge.config import EquipmentBase, Trigger
from emsedge.schema import EventType, Quality, Record, event

_RESERVED = ("type", "serial", "trigger", "value", "previous", "values", "fault_occurrence_id")
_UNSET: Any = object()
_HOLD_RECORDS = 3
"""Records a counter may run ahead of its trigger's events before the difference is announced as missed."""


@dataclass(slots=True)
class _Latest:
    value: Any
    unit: str | None
    good: bool
    quality: str = str(Quality.GOOD)


@dataclass(slots=True)
class _Count:
    """A counter-checked trigger: counter value at the last check, events fired since, serials seen."""

    base: int | None = None
    fired: int = 0
    last_serial: Any = None
    held: int = 0
    serials: list[Any] = field(default_factory=list)


def _clean(value: Any) -> Any:
    """Serials read from registers often carry padding: NULs and spaces are not part of the serial."""
    if isinstance(value, str):
        return value.strip("\x00 \t\r\n")
    return value


class TriggerEngine:
    """Turns signal changes of one piece of equipment into configured events (see module docstring)."""

    def __init__(self, equipment: EquipmentBase) -> None:
        self.equipment = equipment
        self.triggers: list[Trigger] = list(equipment.triggers)
        self._units = {s.name: s.unit for s in equipment.configured_signals()}
        self._latest: dict[str, _Latest] = {}
        # Previous good value of each trigger's on_change signal, per trigger (index).
        self._previous: list[Any] = [_UNSET] * len(self.triggers)
        self._watched = {t.on_change for t in self.triggers}
        self._faults: dict[int, tuple[str, Any]] = {}  # trigger index -> (fault_occurrence_id, fault_code)
        # trigger index -> counter bookkeeping, for triggers with a `counter`
        self._counts: dict[int, _Count] = {i: _Count() for i, t in enumerate(self.triggers) if t.counter}

    def process(self, records: Sequence[Record]) -> list[Record]:
        """Events caused by `records` (which are not modified), in order. Empty when nothing fired."""
        out: list[Record] = []
        for record in records:
            if record.kind != "telemetry" or record.equipment != self.equipment.id:
                continue
            readings = record.body.get("readings") or []
            changed: dict[str, dict[str, Any]] = {}
            fired_now: set[int] = set()
            for r in readings:
                name = r.get("signal")
                if not isinstance(name, str):
                    continue
                quality = str(r.get("quality", Quality.GOOD))
                good = quality == Quality.GOOD and r.get("value") is not None
                previous = self._latest.get(name)
                if good:
                    self._latest[name] = _Latest(r["value"], r.get("unit") or self._units.get(name), True)
                elif previous is not None:
                    previous.good, previous.quality = False, quality
                else:
                    self._latest[name] = _Latest(None, r.get("unit") or self._units.get(name), False, quality)
                if good and name in self._watched:
                    changed[name] = r
            for i, trig in enumerate(self.triggers):
                r = changed.get(trig.on_change)
                if r is None:
                    continue
                fired = self._check(i, trig, r, record)
                count = self._counts.get(i)
                if count is not None and fired:
                    fired_now.add(i)
                    for ev in fired:
                        count.fired += 1
                        count.serials.append(ev.body["event"].get("serial"))
                out.extend(fired)
            for i, count in self._counts.items():
                missed = self._reconcile(i, count, record, i in fired_now)
                if missed is not None:
                    out.append(missed)
        return out

    def _reconcile(self, i: int, count: _Count, record: Record, fired_now: bool) -> Record | None:
        """Compare a trigger's events with its counter (see "Missed boards" in the module docstring)."""
        trig = self.triggers[i]
        assert trig.counter is not None
        latest = self._latest.get(trig.counter)
        if latest is None or not latest.good or isinstance(latest.value, bool):
            return None
        try:
            value = int(latest.value)
        except (TypeError, ValueError):
            return None
        if count.base is None or value < count.base:  # first look, or the machine restarted its counter
            count.base, count.fired, count.held = value, 0, 0
            self._advance(count, self._current_serial(trig))
            return None
        deficit = value - count.base - count.fired
        if deficit <= 0:  # every counted board had its event (a surplus: the counter lags the serial)
            count.base, count.fired, count.held = value, -deficit, 0
            self._advance(count, self._current_serial(trig))
            return None
        if not fired_now and count.held < _HOLD_RECORDS:
            count.held += 1  # the counter may move a poll before the serial register: wait for it
            return None
        before, after = count.last_serial, (count.serials[-1] if count.serials else None)
        base = count.base
        count.base, count.fired, count.held = value, 0, 0
        self._advance(count)
        return event(
            self.equipment.id, self.equipment.type, EventType.UNITS_MISSED, record.ts,
            count=deficit, trigger=trig.on_change, emit=str(trig.emit), counter=trig.counter,
            counter_from=base, counter_to=value,
            last_serial=None if before is None else str(before), next_serial=None if after is None else str(after),
        )

    @staticmethod
    def _advance(count: _Count, current: Any = None) -> None:
        """Start a new window; the last board seen is the latest event's, else the serial shown now."""
        if count.serials:
            count.last_serial = count.serials[-1]
        elif current is not None:
            count.last_serial = current
        count.serials.clear()

    def _current_serial(self, trig: Trigger) -> Any:
        latest = self._latest.get(trig.serial or trig.on_change)
        value = _clean(latest.value) if latest is not None and latest.good else None
        return value if value not in (None, "") else None

    def _check(self, i: int, trig: Trigger, r: dict[str, Any], record: Record) -> list[Record]:
        value = _clean(r["value"])
        previous = self._previous[i]
        self._previous[i] = value
        if previous is _UNSET:
            if trig.skip_initial:
                return []
        elif previous == value:
            return []
        ts = r.get("ts") or record.ts
        before = None if previous is _UNSET else previous
        if trig.emit == "fault_occurred":
            return self._fault(i, trig, value, before, ts)
        if isinstance(value, str) and not value:
            return []  # a cleared serial register ("no board") is not a board
        return [self._event(trig, trig.emit, value, before, ts)]

    def _fault(self, i: int, trig: Trigger, value: Any, previous: Any, ts: str) -> list[Record]:
        """A fault signal: a truthy value is an active fault (its value identifies it), falsy is none."""
        out: list[Record] = []
        active = self._faults.pop(i, None)
        if active is not None:
            occurrence, code = active
            out.append(self._event(trig, EventType.FAULT_CLEARED, value, previous, ts,
                                   fault_occurrence_id=occurrence, fault_code=code))
        if value:
            code = trig.fields.get("fault_code", trig.on_change if isinstance(value, bool) else value)
            if trig.fields.get("text") is None and (text := self._fault_text(trig)) is not None:
                extra_text: dict[str, Any] = {"text": text}
            else:
                extra_text = {}
            occurrence = str(uuid.uuid4())
            self._faults[i] = (occurrence, code)
            out.append(self._event(trig, EventType.FAULT_OCCURRED, value, previous, ts,
                                   fault_occurrence_id=occurrence, fault_code=code, **extra_text))
        return out

    def _fault_text(self, trig: Trigger) -> str | None:
        for name in trig.include:
            if name.endswith(("text", "message")):
                latest = self._latest.get(name)
                if latest is not None and latest.good and latest.value not in (None, ""):
                    return str(_clean(latest.value))
        return None

    def _event(self, trig: Trigger, emit: str, value: Any, previous: Any, ts: str, **extra: Any) -> Record:
        values: dict[str, dict[str, Any]] = {}
        for name in trig.include:
            latest = self._latest.get(name)
            unit = latest.unit if latest is not None else self._units.get(name)
            if latest is None:
                values[name] = {"value": None, "unit": unit, "quality": str(Quality.BAD)}
            elif not latest.good:
                values[name] = {"value": None, "unit": unit, "quality": latest.quality}
            else:
                values[name] = {"value": latest.value, "unit": unit}
        serial: Any = None
        if trig.serial is not None:
            latest = self._latest.get(trig.serial)
            serial = _clean(latest.value) if latest is not None and latest.good else None
        body: dict[str, Any] = {k: v for k, v in trig.fields.items() if k not in _RESERVED}
        body.update(extra)
        body.update(serial=serial, trigger=trig.on_change, value=value, previous=previous, values=values)
        return event(self.equipment.id, self.equipment.type, emit, ts, **body)
