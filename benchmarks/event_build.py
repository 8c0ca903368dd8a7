"""Cost of building event bodies through their contract models (emsedge.schema.event) versus plain dicts.

Events are per board, fault or state change (a few per second per machine), telemetry readings are per
value and stay plain dicts; this prints what the validation of an event body costs, for a reflow
`unit_processed` with its 23-signal zone profile, an AOI `unit_inspected` with defects and a fault.
Run: `.venv/bin/python benchmarks/event_build.py`.
"""

from __future__ import annotations

import timeit
from typing import Any

from emsedge.schema import Record, event, reading

TS = "2026-11-24T10:15:02.000Z"
PROFILE = {f"zone{z}_{side}_actual": {"value": 240.5, "unit": "Cel"}
           for z in range(1, 11) for side in ("top", "bottom")}
PROFILE |= {"conveyor_speed": {"value": 80.0, "unit": "cm/min"}, "o2_ppm": {"value": 850, "unit": "ppm"},
            "recipe": {"value": "SAC305-STD", "unit": None}}


def main() -> None:
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "unit_processed (23 values)": ("unit_processed", {
            "serial": "PCB-2026-000123", "trigger": "board_exit_serial", "value": "PCB-2026-000123",
            "previous": "PCB-2026-000122", "values": PROFILE, "process": "reflow"}),
        "unit_inspected (3 defects)": ("unit_inspected", {
            "serial": "PCB-2026-000123", "result": "fail", "raw_result": "FAIL", "ceid": 3001,
            "name": "board_inspected", "defects": ["C5:missing", "R3:bridge", "U1:shift"],
            "values": {"board_serial": "PCB-2026-000123", "result": "FAIL", "defect_count": 3}}),
        "fault_occurred (SECS/GEM)": ("fault_occurred", {
            "fault_occurrence_id": "c2b4", "alid": 7, "altx": "Camera light low", "alcd": 134, "severity": "warning"}),
    }
    n = 20_000
    for name, (kind, fields) in cases.items():
        typed = timeit.timeit(lambda k=kind, f=fields: event("eq", "reflow_oven", k, TS, **f), number=n) / n
        plain = timeit.timeit(lambda k=kind, f=fields: Record("event", "eq", "reflow_oven", TS,
                                                              {"event": {"type": k, **f}}), number=n) / n
        print(f"{name:<28} model {typed * 1e6:6.1f} us   plain dict {plain * 1e6:5.2f} us")
    one = timeit.timeit(lambda: reading("zone1_top_actual", 240.5, unit="Cel", ts=TS), number=200_000) / 200_000
    print(f"{'one telemetry reading':<28} plain dict {one * 1e6:5.2f} us (unchanged: no model on the hot path)")


if __name__ == "__main__":
    main()
