"""The virtual in-circuit tester: writes one i3070-style log per board into a folder, like a real ICT PC.

Each board gets resistor, capacitor, inductor and diode measurements around their nominal values; a few
percent of boards fail one component (BTEST status 06, "failed analog test"), and some of those are
retested at once and pass (a contact problem), which is a second file and a second result for the same
serial. Files are written under a temporary `.tmp` name and renamed into place, as testers do, so a
reader never sees half a file; `chunked=True` appends in pieces instead, to exercise settle detection.

In the virtual line (`emsedge simulate`) the station stands after the AOI: the line model decides each
board's verdicts (`Ict` in line.py, the ground truth) and `write_results` writes them as files.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Component:
    designator: str
    tag: str  # i3070 analog record: A-RES, A-CAP, A-IND, A-DIO
    nominal: float
    tolerance: float  # relative, e.g. 0.05


COMPONENTS: tuple[Component, ...] = (
    Component("r101", "A-RES", 10_000.0, 0.05),
    Component("r102", "A-RES", 4_700.0, 0.05),
    Component("r205", "A-RES", 100.0, 0.02),
    Component("c12", "A-CAP", 100e-9, 0.2),
    Component("c14", "A-CAP", 4.7e-6, 0.2),
    Component("c30", "A-CAP", 22e-12, 0.3),
    Component("l3", "A-IND", 10e-6, 0.1),
    Component("d1", "A-DIO", 0.65, 0.15),
)


@dataclass(frozen=True, slots=True)
class IctOutcome:
    serial: str
    passed: bool
    failed: tuple[str, ...]
    path: Path


def _num(value: float) -> str:
    return f"{value:+.6E}"


def render_i3070(
    serial: str,
    *,
    started: datetime,
    duration_s: int,
    measurements: list[tuple[Component, float]],
    program: str = "MAINBOARD",
    revision: str = "A",
    tester: str = "vict-1",
    operator: str = "",
    board_number: int = 1,
    panel_serial: str | None = None,
    status: int | None = None,
) -> str:
    """One i3070 BATCH/BTEST tree; `started` is written as tester-local wall time (its own zone)."""
    failed = [c for c, v in measurements if abs(v - c.nominal) > c.nominal * c.tolerance]
    if status is None:
        status = 6 if failed else 0
    ended = started + timedelta(seconds=duration_s)
    stamp = "%y%m%d%H%M%S"
    lines = [
        f"{{@BATCH|{program}|{revision}|1001|1|A|btest|{started.strftime(stamp)}|{operator}|{tester}|{program}|"
        f"{revision}|{program}_PANEL|{revision}|",
        f"{{@BTEST|{serial}|{status:02d}|{started.strftime(stamp)}|{duration_s:06d}|0|all||n|n|"
        f"{ended.strftime(stamp)}||{board_number:03d}|{panel_serial or serial}",
        f"{{@PF|{board_number}%pins|0|0",
        "}",
        f"{{@TS|0|000|000|000|{board_number}%shorts",
        "}",
    ]
    for component, value in measurements:
        ok = component not in failed
        high = component.nominal * (1 + component.tolerance)
        low = component.nominal * (1 - component.tolerance)
        lines.append(f"{{@BLOCK|{board_number}%{component.designator}|{'00' if ok else '01'}")
        lines.append(
            f"{{@{component.tag}|{0 if ok else 1}|{_num(value)}"
            f"{{@LIM3|{_num(component.nominal)}|{_num(high)}|{_num(low)}}}}}"
        )
        lines.append("}")
    lines.append("}}")
    return "\n".join(lines) + "\n"


class IctStation:
    """Writes result logs into `folder`; `rng` makes a run reproducible."""

    def __init__(
        self,
        folder: Path,
        *,
        rng: random.Random | None = None,
        fail_rate: float = 0.03,
        retest_rate: float = 0.5,
        tester_zone: tzinfo = UTC,
        program: str = "MAINBOARD",
        tester: str = "vict-1",
        components: tuple[Component, ...] = COMPONENTS,
    ) -> None:
        self.folder = folder
        self.rng = rng or random.Random()
        self.fail_rate = fail_rate
        self.retest_rate = retest_rate
        self.zone = tester_zone
        self.program = program
        self.tester = tester
        self.components = components
        self.written = 0
        folder.mkdir(parents=True, exist_ok=True)

    def measure(self, fail: bool) -> list[tuple[Component, float]]:
        values = [(c, c.nominal * (1 + self.rng.uniform(-0.5, 0.5) * c.tolerance)) for c in self.components]
        if fail:
            i = self.rng.randrange(len(values))
            component = values[i][0]
            values[i] = (component, component.nominal * (1 + self.rng.choice((-3, 3)) * component.tolerance))
        return values

    def test_board(self, serial: str, when: datetime, *, chunked: bool = False) -> list[IctOutcome]:
        """Test one board at `when` (aware); a failing board may be retested right away."""
        fail = self.rng.random() < self.fail_rate
        outcomes = [self._write(serial, when, self.measure(fail), chunked)]
        if fail and self.rng.random() < self.retest_rate:
            outcomes.append(self._write(serial, when + timedelta(seconds=40), self.measure(False), chunked))
        return outcomes

    def write_results(self, serial: str, when: datetime, results: list[str]) -> list[IctOutcome]:
        """Write one file per verdict (`PASS`/`FAIL`), in order, 40 s apart (a retest right after a fail)."""
        return [
            self._write(serial, when + timedelta(seconds=40 * i), self.measure(result == "FAIL"), False)
            for i, result in enumerate(results)
        ]

    def _write(self, serial: str, when: datetime, values: list[tuple[Component, float]], chunked: bool) -> IctOutcome:
        local = when.astimezone(self.zone).replace(tzinfo=None)
        text = render_i3070(serial, started=local, duration_s=31, measurements=values, program=self.program,
                            tester=self.tester)
        self.written += 1
        path = self.folder / f"{serial}_{local:%y%m%d%H%M%S}_{self.written}.log"
        data = text.encode()
        if chunked:
            with open(path, "wb") as f:
                for start in range(0, len(data), 256):
                    f.write(data[start:start + 256])
                    f.flush()
        else:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        failed = tuple(
            f"1%{c.designator}" for c, v in values if abs(v - c.nominal) > c.nominal * c.tolerance
        )
        return IctOutcome(serial, not failed, failed, path)
