#!/usr/bin/env python3
"""A reference MES-side subscriber for emsedge: de-duplicate, detect gaps, join board data by serial.

For integrators: this is the small amount of logic a consumer of emsedge needs, with no dependency but
paho-mqtt (`pip install paho-mqtt`). Run it against a gateway's broker:

    python examples/mes_subscriber.py --url mqtt://127.0.0.1:1883 --prefix ems/demo-plant/smt/virtual-line

and it prints one JSON line per board once placement, reflow and inspection (and, once a tester has
reported, its test) have all been seen:

    {"serial": "PCB-2026-000123",
     "placement": {"equipment": "pnp-1", "ts": "...", "program": "MAIN-CTRL-REV-C",
                   "materials": [{"slot": 1, "reel_id": "REEL-100551", "part_number": "RES-0402-10K",
                                  "ref_designators": ["R1", "R2", ...]}, ...]},
     "reflow": {"equipment": "reflow-1", "ts": "...", "profile": {"zone1_top_actual": 150.2, ...},
                "units": {"zone1_top_actual": "Cel", ...}},
     "inspection": {"equipment": "aoi-1", "ts": "...", "result": "pass", "defects": []},
     "test": {"equipment": "ict-1", "ts": "...", "result": "pass", "failed_tests": [], "measurements": 8,
              "source": {"file": "...", "sha256": "...", "board_index": 0}, "runs": [...]}}

and, separately, one line per board whose traceability is still incomplete `--incomplete-after` seconds
(60 by default) after the first event that named it, saying which stages are missing:

    {"incomplete": {"serial": "PCB-2026-000124", "missing": ["reflow"], "seen": {"placement": "pnp-1",
     "inspection": "aoi-1"}, "units_missed": [{"equipment": "reflow-1", "count": 1, ...}]}}

What the contract (docs/mqtt-contract.md) asks of a consumer, and how this file does it:

* **At-least-once delivery**: a message can arrive twice (after a reconnect the gateway re-sends what
  the broker had not acknowledged). Every message has a UUID `id` that is stable across re-delivery:
  `MesSubscriber` remembers recent ids and drops repeats.
* **Gaps**: every message of one gateway has a `seq`, strictly increasing and persisted across gateway
  restarts. Backlog replayed after an outage carries `"replayed": true` and may interleave with live
  messages, so numbers are tracked as a set, not as "last + 1".
* **Reconciliation**: when the gateway had to drop records by policy (its buffer was full during a long
  outage, a record the broker refused for good, data an adapter lost), it says so in a `buffer_dropped`
  event whose `dropped_seqs` ([[first, last], ...]) lists exactly the seqs that are gone. Those events are
  never dropped themselves. So every seq is either received or covered by an announcement:
  `explained_gaps()` lists missing seqs an announcement covers ("gap explained by eviction" and the other
  reasons), `gaps()` only the unexplained ones, which point at a fault outside the gateway (a broker that
  lost messages, a subscriber session that expired). `dropped_total` in the announcements and in the
  retained status is the gateway's cumulative loss count.
* **Traceability**: the machines report the same board serial in their own events
  (`materials_installed`, `unit_processed`, `unit_inspected`, and the tester's `unit_tested`); joining
  them by `serial` gives the record of each board down to the reel of every component. A retest is a new
  `unit_tested` event: `test` is the latest run, `test.runs` every run in order. A tester result that the
  gateway re-sent after a crash has the same `id` (dropped like any repeat) with a new `seq` (counted as
  received, so no false gap); it is also recognised by its `source` (file sha256 and board index), for
  gateways that re-sent it with a new `id`, and not counted as a run twice.
* **Missed boards**: a board can pass a machine while the gateway cannot see it (a connection outage).
  The gateway then sends `units_missed` (how many, the serials seen around the gap); boards that stay
  incomplete are reported by `check_incomplete()` with the `units_missed` events of the machines that
  lack their record, never silently dropped.

* **Compact telemetry** (`mqtt.telemetry_format: compact`): readings arrive as `{signal: value}` with
  units in a retained meta message per machine (`{prefix}/{equipment}/meta`), which the gateway publishes
  before the messages that need it. `expand_compact()` rebuilds the full readings (the recipe of
  docs/mqtt-contract.md); a message whose meta has not arrived yet is held until it does.

`MesSubscriber.handle(topic, payload)` is pure (no network) so it can be unit-tested and reused; the
paho wiring is in `connect()` and `main()`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

FEEDER_VALUE = re.compile(r"^(?:feeder|slot)_?(\d+)_(reel_id|part_number|ref_designators|lot_id)$")
SEEN_IDS = 100_000
"""How many recent message ids are remembered for de-duplication."""


COMPACT_TELEMETRY = "emsedge/telemetry-compact@1"
WAITING_LIMIT = 10_000
"""Compact messages held per machine while its meta is missing; beyond that they count as invalid."""


def expand_compact(message: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A compact telemetry message in the full form (`emsedge/telemetry@1`), with its machine's meta."""
    units = {name: entry.get("unit") for name, entry in meta["signals"].items()}
    exceptions = message.get("x") or {}
    readings = []
    for signal, value in message["v"].items():
        reading = {"signal": signal, "value": value, "unit": units.get(signal), "quality": "good",
                   "ts": message["ts"]}
        reading.update(exceptions.get(signal, {}))
        readings.append(reading)
    full = {k: v for k, v in message.items() if k not in ("meta", "v", "x")}
    full["schema"] = "emsedge/telemetry@1"
    full["readings"] = readings
    return full


@dataclass
class GatewaySeq:
    """Sequence numbers of one gateway: everything below `next` was seen; `ahead` holds seen ones above."""

    first: int
    next: int
    ahead: set[int] = field(default_factory=set)
    late: int = 0

    def add(self, seq: int) -> bool:
        """Record `seq`; False when it was already seen (or precedes what this subscriber saw first)."""
        if seq < self.next or seq in self.ahead:
            if seq < self.first:
                self.late += 1
            return False
        self.ahead.add(seq)
        while self.next in self.ahead:
            self.ahead.discard(self.next)
            self.next += 1
        return True

    def missing(self) -> list[int]:
        if not self.ahead:
            return []
        return [s for s in range(self.next, max(self.ahead)) if s not in self.ahead]

    @property
    def highest(self) -> int:
        return max(self.ahead) if self.ahead else self.next - 1


def plain_values(values: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """`values` of an event as {name: value} and {name: unit}.

    Triggered events carry {name: {"value": v, "unit": u}}; SECS/GEM event reports carry {name: v}.
    """
    plain: dict[str, Any] = {}
    units: dict[str, str] = {}
    if not isinstance(values, dict):
        return plain, units
    for name, v in values.items():
        if isinstance(v, dict) and "value" in v:
            plain[name] = v.get("value")
            if v.get("unit"):
                units[name] = v["unit"]
        else:
            plain[name] = v
    return plain, units


STAGES = {"placement": "materials_installed", "reflow": "unit_processed", "inspection": "unit_inspected"}
"""Stages of a complete board and the event type that records each."""


def parse_defect(defect: Any) -> dict[str, Any]:
    """{"refdes", "code", "text"} (event@2), or "C12:tombstone" / ["C12", "tombstone"] from event@1 gateways,
    -> {"refdes", "code"} plus "text" when the machine gave one."""
    if isinstance(defect, dict):
        out = {"refdes": defect.get("refdes"), "code": defect.get("code")}
        if defect.get("text") is not None:
            out["text"] = defect["text"]
        return out
    if isinstance(defect, str):
        refdes, _, code = defect.partition(":")
        return {"refdes": refdes, "code": code or None}
    if isinstance(defect, list | tuple) and defect:
        return {"refdes": defect[0], "code": defect[1] if len(defect) > 1 else None}
    return {"refdes": None, "code": defect}


class MesSubscriber:
    """Everything MES keeps from the stream; feed it with `handle(topic, payload)`."""

    def __init__(self, on_board: Callable[[dict[str, Any]], None] | None = None, *,
                 incomplete_after: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_board = on_board
        self.incomplete_after = incomplete_after
        self.clock = clock
        self._first_seen: dict[str, float] = {}
        self.reported_incomplete: dict[str, dict[str, Any]] = {}
        self.units_missed: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.received = 0
        self.duplicates = 0
        self.invalid = 0
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.seqs: dict[str, GatewaySeq] = {}
        self.boards: dict[str, dict[str, Any]] = {}
        self.completed: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.state_changes: list[dict[str, Any]] = []
        self.active_faults: dict[str, dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.connections: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.announced: dict[str, set[int]] = {}
        """Per gateway: seqs a `buffer_dropped` announcement said are gone."""
        self.dropped_total: dict[str, int] = {}
        self.loss_reasons: dict[str, dict[str, int]] = {}
        self.metas: dict[str, dict[str, Any]] = {}
        """Per equipment: the retained meta its compact telemetry is written against (`emsedge/meta@1`)."""
        self.waiting: dict[str, list[dict[str, Any]]] = {}
        """Per equipment: compact telemetry that arrived before its meta (held, at most WAITING_LIMIT)."""
        self.tester_seen = False
        """True once any unit_tested arrived: from then on a board is complete only with its test."""

    # --------------------------------------------------------------------------------------------
    # intake

    def handle(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/meta"):
            self._meta(topic.rsplit("/", 2)[-2], payload)
            return
        try:
            message = json.loads(payload)
        except ValueError:
            self.invalid += 1
            return
        if not isinstance(message, dict):
            self.invalid += 1
            return
        with self.lock:
            if topic.endswith("/_gateway/status"):
                self.status[str(message.get("gateway"))] = message
                return
            message_id = message.get("id")
            if message_id is None or "seq" not in message:
                self.invalid += 1
                return
            gateway = str(message.get("gateway"))
            seq = int(message["seq"])
            if gateway not in self.seqs:
                self.seqs[gateway] = GatewaySeq(first=seq, next=seq)
            self.seqs[gateway].add(seq)  # before the id check: a re-emitted copy's new seq is no gap
            if message_id in self._ids:
                self.duplicates += 1
                return
            self._ids[message_id] = None
            if len(self._ids) > SEEN_IDS:
                self._ids.popitem(last=False)
            self.received += 1
            if "readings" in message:
                self._telemetry(message)
            elif message.get("schema") == COMPACT_TELEMETRY:
                self._compact(message)
            elif isinstance(message.get("event"), dict):
                self._event(message)

    def _meta(self, equipment: str, payload: bytes) -> None:
        with self.lock:
            if not payload:  # the machine left the gateway's config
                self.metas.pop(equipment, None)
                return
            try:
                meta = json.loads(payload)
            except ValueError:
                self.invalid += 1
                return
            self.metas[equipment] = meta
            held = self.waiting.pop(equipment, [])
            for message in held:
                self._compact(message)

    def _compact(self, message: dict[str, Any]) -> None:
        equipment = str(message.get("equipment"))
        meta = self.metas.get(equipment)
        if meta is None or meta.get("meta") != message.get("meta"):
            held = self.waiting.setdefault(equipment, [])
            if len(held) < WAITING_LIMIT:
                held.append(message)
            else:
                self.invalid += 1
            return
        self._telemetry(expand_compact(message, meta))

    def _telemetry(self, message: dict[str, Any]) -> None:
        latest = self.latest.setdefault(message["equipment"], {})
        for r in message["readings"]:
            latest[r["signal"]] = {"value": r.get("value"), "unit": r.get("unit"), "quality": r.get("quality"),
                                   "ts": r.get("ts")}

    def _event(self, message: dict[str, Any]) -> None:
        ev = message["event"]
        kind = ev.get("type")
        equipment = message.get("equipment")
        ts = message.get("ts")
        if kind == "materials_installed":
            self._placement(message, ev)
        elif kind == "unit_processed":
            values, units = plain_values(ev.get("values"))
            skip = ("type", "serial", "values", "trigger", "value", "previous")
            self._stage(ev.get("serial"), "reflow", {
                "equipment": equipment, "ts": ts, "profile": values, "units": units,
                **{k: v for k, v in ev.items() if k not in skip},
            })
        elif kind == "unit_inspected":
            defects = ev.get("defects") or []
            self._stage(ev.get("serial"), "inspection", {
                "equipment": equipment, "ts": ts, "result": ev.get("result"),
                "defects": [parse_defect(d) for d in (defects if isinstance(defects, list) else [defects])],
            })
        elif kind == "unit_tested":
            self._test(message, ev)
        elif kind == "station_state_changed":
            change = {"equipment": equipment, "ts": ts, "state": ev.get("state"), "state_name": ev.get("state_name"),
                      "old_state_name": ev.get("old_state_name")}
            self.states[str(equipment)] = change
            self.state_changes.append(change)
        elif kind == "fault_occurred":
            fault = {"equipment": equipment, "ts": ts, **{k: v for k, v in ev.items() if k != "type"}}
            self.faults.append({"type": kind, **fault})
            self.active_faults[str(ev.get("fault_occurrence_id"))] = fault
        elif kind == "fault_cleared":
            self.faults.append({"type": kind, "equipment": equipment, "ts": ts,
                                **{k: v for k, v in ev.items() if k != "type"}})
            self.active_faults.pop(str(ev.get("fault_occurrence_id")), None)
        elif kind == "units_missed":
            self.units_missed.append({"equipment": equipment, "ts": ts,
                                      **{k: v for k, v in ev.items() if k != "type"}})
        elif kind == "buffer_dropped":
            gateway = str(message.get("gateway"))
            covered = self.announced.setdefault(gateway, set())
            for first, last in ev.get("dropped_seqs") or []:
                covered.update(range(int(first), int(last) + 1))
            total = ev.get("dropped_total")
            if isinstance(total, int):
                self.dropped_total[gateway] = max(total, self.dropped_total.get(gateway, 0))
            reasons = self.loss_reasons.setdefault(gateway, {})
            for reason, n in (ev.get("by_reason") or {ev.get("reason") or "unknown": ev.get("count", 0)}).items():
                reasons[reason] = reasons.get(reason, 0) + int(n)
        elif kind in ("connection_lost", "connection_restored"):
            self.connections.append({"type": kind, "equipment": equipment, "ts": ts, "reason": ev.get("reason")})

    def _placement(self, message: dict[str, Any], ev: dict[str, Any]) -> None:
        values, _units = plain_values(ev.get("values"))
        slots: dict[int, dict[str, Any]] = {}
        other: dict[str, Any] = {}
        for name, value in values.items():
            m = FEEDER_VALUE.match(name)
            if m is None:
                other[name] = value
                continue
            slots.setdefault(int(m.group(1)), {"slot": int(m.group(1))})[m.group(2)] = value
        self._stage(ev.get("serial"), "placement", {
            "equipment": message.get("equipment"), "ts": message.get("ts"),
            "program": other.pop("program", None), "materials": [slots[k] for k in sorted(slots)],
            **({"values": other} if other else {}),
        })

    def _test(self, message: dict[str, Any], ev: dict[str, Any]) -> None:
        """One test run. Runs of a serial are kept in order; a re-sent result (same source) is dropped."""
        serial = ev.get("serial")
        if not serial:
            return
        self.tester_seen = True
        raw_tests = ev.get("tests")
        tests: list[Any] = raw_tests if isinstance(raw_tests, list) else []
        run = {
            "equipment": message.get("equipment"), "ts": message.get("ts"), "result": ev.get("result"),
            "failed_tests": ev.get("failed_tests") or [], "started": ev.get("started"), "ended": ev.get("ended"),
            "program": ev.get("program"), "test_method": ev.get("test_method"),
            "measurements": sum(len(t.get("measurements") or ()) for t in tests if isinstance(t, dict)),
            "source": ev.get("source"),
        }
        previous = self.boards.get(str(serial), {}).get("test", {}).get("runs", [])
        if run["source"] is not None and any(r["source"] == run["source"] for r in previous):
            self.duplicates += 1
            return
        self._stage(serial, "test", {**run, "runs": [*previous, run]})

    def _stage(self, serial: Any, stage: str, data: dict[str, Any]) -> None:
        if not serial:
            return
        serial = str(serial)
        board = self.boards.setdefault(serial, {"serial": serial})
        self._first_seen.setdefault(serial, self.clock())
        board[stage] = data
        if serial not in self.completed and self.is_complete(board, test=self.tester_seen):
            self.completed.append(serial)
            if self.on_board is not None:
                self.on_board(board)

    # --------------------------------------------------------------------------------------------
    # queries

    @staticmethod
    def is_complete(board: dict[str, Any], *, test: bool = False) -> bool:
        stages = ("placement", "reflow", "inspection", "test") if test else ("placement", "reflow", "inspection")
        return all(stage in board for stage in stages)

    def check_incomplete(self) -> list[dict[str, Any]]:
        """Boards still incomplete `incomplete_after` seconds after their first event, each reported once.

        Each report names the missing stages, the equipment of the stages seen, and the `units_missed`
        events that announced boards passing unseen (the likely reason), so MES can flag the board.
        """
        now = self.clock()
        out: list[dict[str, Any]] = []
        with self.lock:
            for serial, first in self._first_seen.items():
                board = self.boards[serial]
                complete = self.is_complete(board, test=self.tester_seen)
                if serial in self.reported_incomplete or complete or now - first < self.incomplete_after:
                    continue
                stages = {**STAGES, "test": "unit_tested"} if self.tester_seen else STAGES
                missing = [stage for stage in stages if stage not in board]
                lacking = {stages[stage] for stage in missing}
                report = {
                    "serial": serial,
                    "missing": missing,
                    "seen": {stage: board[stage].get("equipment") for stage in stages if stage in board},
                    "units_missed": [m for m in self.units_missed if m.get("emit") in lacking],
                }
                self.reported_incomplete[serial] = report
                out.append(report)
        return out

    def gaps(self) -> dict[str, list[int]]:
        """Unexplained missing sequence numbers per gateway (between the first and the highest seen): no
        message and no `buffer_dropped` announcement covers them."""
        with self.lock:
            return {gw: missing for gw in self.seqs if (missing := self._unexplained(gw))}

    def explained_gaps(self) -> dict[str, list[int]]:
        """Missing sequence numbers that a `buffer_dropped` announcement covers (gap explained by eviction,
        dead letter or another counted loss)."""
        with self.lock:
            return {gw: explained for gw in self.seqs if (explained := self._explained(gw))}

    def _unexplained(self, gateway: str) -> list[int]:
        covered = self.announced.get(gateway, set())
        return [s for s in self.seqs[gateway].missing() if s not in covered]

    def _explained(self, gateway: str) -> list[int]:
        covered = self.announced.get(gateway, set())
        return [s for s in self.seqs[gateway].missing() if s in covered]

    def inspected_serials(self) -> list[str]:
        with self.lock:
            return [s for s, b in self.boards.items() if "inspection" in b]

    def tested_serials(self) -> list[str]:
        with self.lock:
            return [s for s, b in self.boards.items() if "test" in b]

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "received": self.received,
                "duplicates": self.duplicates,
                "invalid": self.invalid,
                "gaps": {gw: self._unexplained(gw) for gw in self.seqs},
                "gaps_explained_by_loss": {gw: len(self._explained(gw)) for gw in self.seqs},
                "dropped_total": dict(self.dropped_total),
                "loss_reasons": {gw: dict(r) for gw, r in self.loss_reasons.items()},
                "boards": len(self.boards),
                "complete_boards": len(self.completed),
                "incomplete_boards": sorted(s for s in self.reported_incomplete if s not in self.completed),
                "units_missed": sum(int(m.get("count") or 0) for m in self.units_missed),
                "active_faults": len(self.active_faults),
                "states": {eq: s.get("state_name") for eq, s in self.states.items()},
            }


# ------------------------------------------------------------------------------------------------
# MQTT wiring (paho-mqtt 2.x)


def connect(sub: MesSubscriber, url: str, prefix: str, *, client_id: str | None = None,
            persistent: bool = False) -> Any:
    """A started paho client feeding `sub`. Call `client.loop_stop(); client.disconnect()` to stop.

    With `persistent` (and a fixed `client_id`) the broker keeps the subscription and queues QoS 1
    messages while this subscriber is away, so nothing is missed across its own restarts.
    """
    import paho.mqtt.client as mqtt  # noqa: PLC0415 - keeps `MesSubscriber` importable without paho
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=not persistent,
                         protocol=mqtt.MQTTv311)
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        client.subscribe(f"{prefix}/#", qos=1)
        connected.set()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        sub.handle(msg.topic, msg.payload)

    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(0.2, 5)
    if parts.scheme in ("mqtts", "ssl"):
        client.tls_set()
    client.connect(parts.hostname or "127.0.0.1", parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883),
                   keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        raise TimeoutError(f"cannot connect to {url}")
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reference MES subscriber for emsedge.")
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="broker URL")
    parser.add_argument("--prefix", default="ems/+/+/+", help="topic prefix of the gateway(s)")
    parser.add_argument("--client-id", default=None, help="fixed client id (with --persistent)")
    parser.add_argument("--persistent", action="store_true", help="keep the session while away")
    parser.add_argument("--incomplete-after", type=float, default=60.0, metavar="SECONDS",
                        help="report a board whose traceability is incomplete this long after its first event")
    args = parser.parse_args(argv)

    def print_board(board: dict[str, Any]) -> None:
        print(json.dumps(board), flush=True)

    sub = MesSubscriber(on_board=print_board, incomplete_after=args.incomplete_after)
    client = connect(sub, args.url, args.prefix, client_id=args.client_id, persistent=args.persistent)
    try:
        while not threading.Event().wait(1.0):
            for report in sub.check_incomplete():
                print(json.dumps({"incomplete": report}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
        print(json.dumps({"summary": sub.summary()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
