"""The fault schedule: which faults are active at a given line time, and which started or ended.

Demos and tests need drops, alarms and reconnects on purpose, at known times, so the schedule is pure
data evaluated against the line clock (no randomness here). With `repeat_every` the schedule repeats,
each repetition being a new occurrence of every fault.

Invariant: `Occurrence` values are hashable and stable while active, so callers diff two `active()`
sets to find starts and ends, and a fault that spans several ticks is reported once each way.
"""

from __future__ import annotations

from dataclasses import dataclass

from emsedge.simulate.config import FaultEntry, FaultSchedule


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence of a scheduled fault: entry index and repetition number identify it."""

    index: int
    repetition: int
    machine: str
    fault: str
    code: int | None
    start: float
    end: float


class Schedule:
    def __init__(self, config: FaultSchedule) -> None:
        self.entries: list[FaultEntry] = list(config.faults)
        self.period = config.repeat_every

    def active(self, now: float) -> frozenset[Occurrence]:
        """Faults active at line time `now` (start inclusive, end exclusive)."""
        if now < 0:
            return frozenset()
        repetition = 0
        local = now
        if self.period is not None:
            repetition = int(now // self.period)
            local = now - repetition * self.period
        found = set()
        for i, e in enumerate(self.entries):
            if e.at <= local < e.at + e.duration:
                start = repetition * (self.period or 0.0) + e.at
                found.add(Occurrence(i, repetition, e.machine, e.fault, e.code, start, start + e.duration))
        return frozenset(found)

    @staticmethod
    def has(active: frozenset[Occurrence], machine: str, fault: str) -> bool:
        return any(o.machine == machine and o.fault == fault for o in active)

    @staticmethod
    def of(active: frozenset[Occurrence], machine: str, fault: str) -> list[Occurrence]:
        return sorted((o for o in active if o.machine == machine and o.fault == fault), key=lambda o: o.start)
