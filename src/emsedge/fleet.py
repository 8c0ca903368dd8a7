"""`emsedge fleet`: one row per line from every gateway's retained status under a prefix, for plant IT.

    emsedge fleet --broker mqtts://broker.plant:8883 --prefix ems/plant-a --ca-file plant-ca.pem
    emsedge fleet --broker mqtt://broker:1883 --prefix ems/plant-a --json --expect 42

Every gateway keeps a retained status on `{line prefix}/_gateway/status` (`emsedge/status@1`, see
docs/mqtt-contract.md): `online` with its backlog, loss and equipment figures, refreshed every
`mqtt.status_interval`; `offline` with `cause: stopped` on a clean stop, or the last will
(`cause: connection_lost`) when the broker lost the gateway. Line prefixes are `ems/{site}/{area}/{line}`
by default, so the status topics under `--prefix` are found with single-level wildcards, 0 to
`--depth` levels deep (`ems/plant-a/+/+/_gateway/status` for a site). The command only subscribes: it
never publishes, and needs read access to those topics alone (docs/broker-acl.md).

Collecting is bounded: once the broker acknowledged the subscriptions (QoS 0: a retained message needs no
session; within CONNECT_TIMEOUT) it waits until statuses arrived and then none for `QUIET` seconds (a
broker sends retained messages with or right after the SUBACK), until `--expect` lines were seen, or until
`--wait` ran out, whichever comes first. With no line at all it waits the whole `--wait`.

A line is **offline** when its status says so, when it is `online` but older than `--stale-after`
(default 3x the status interval it announces; its gateway stopped refreshing, or its clock is off), when its
status cannot be read, or (with `--expect N`) when fewer than N lines were found. A line is **losing data**
when its `dropped_total` (records lost by a sanctioned policy, cumulative over the life of its buffer, every
reason) is above the line's figure in `--baseline FILE` (an earlier `--json` output; 0 without one). So
without a baseline any loss ever counts; with one, only loss since the baseline was taken.

Exit status (new codes after the CLI's existing ones): 0 every line online and not losing data; 1 no
broker, refused, or no line found; 2 usage; 3 at least one line offline (wins over 4); 4 every line online
but at least one losing data; 78 an invalid `-c` config.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from emsedge.schema import GATEWAY_EQUIPMENT, StatusMessage

EX_OK = 0
EX_UNREACHABLE = 1
EX_USAGE = 2
EX_OFFLINE = 3
EX_LOSING_DATA = 4
EX_CONFIG = 78

STATUS_SUFFIX = f"{GATEWAY_EQUIPMENT}/status"
DEFAULT_STATUS_INTERVAL = 10.0
"""What a gateway that does not announce `status_interval_s` (before it existed) refreshed at."""
STALE_FACTOR = 3.0
QUIET = 0.3
"""Seconds without a new status after which collecting ends early."""
CONNECT_TIMEOUT = 10.0


@dataclass
class LineRow:
    """One line as the fleet view shows it (and as `--json` prints it)."""

    line: str
    """The line's topic prefix relative to `--prefix` (e.g. `smt/line-1`; `.` when it is the prefix)."""
    topic: str
    gateway: str | None = None
    state: str = "unknown"
    """online | offline | stale | unreadable | missing."""
    cause: str | None = None
    version: str | None = None
    backlog: int | None = None
    backlog_oldest_age_s: float | None = None
    dropped_total: int | None = None
    dropped_baseline: int = 0
    equipment_connected: int | None = None
    equipment_total: int | None = None
    equipment_by_state: dict[str, int] | None = None
    last_seen: str | None = None
    """The status's `ts`: the last time the gateway is known to have been alive (see `cause`)."""
    last_seen_age_s: float | None = None
    online: bool = False
    losing_data: bool = False
    problems: list[str] = field(default_factory=list)


def status_filters(prefix: str, depth: int) -> list[str]:
    """Subscriptions that reach every `_gateway/status` 0..depth levels below `prefix`."""
    return [f"{prefix}/{'+/' * levels}{STATUS_SUFFIX}" for levels in range(depth + 1)]


def _parse_ts(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def assess(
    statuses: Mapping[str, bytes],
    prefix: str,
    *,
    now: float,
    stale_after: float | None = None,
    baseline: Mapping[str, int] | None = None,
    expect: int | None = None,
) -> list[LineRow]:
    """Rows for the retained statuses (topic -> payload) at wall time `now`. Pure: no I/O, no clock."""
    baseline = baseline or {}
    rows: list[LineRow] = []
    for topic in sorted(statuses):
        payload = statuses[topic]
        line_prefix = topic[: -len(STATUS_SUFFIX) - 1]
        line = line_prefix[len(prefix) + 1:] if line_prefix != prefix else "."
        row = LineRow(line=line, topic=topic, dropped_baseline=baseline.get(line, 0))
        rows.append(row)
        try:
            status = StatusMessage.model_validate_json(payload)
        except ValidationError as exc:
            row.state = "unreadable"
            row.problems.append(f"status unreadable: {exc.errors()[0]['msg'] if exc.errors() else exc}")
            continue
        row.gateway, row.cause, row.version = status.gateway, status.cause, status.version
        row.backlog, row.backlog_oldest_age_s = status.backlog, status.backlog_oldest_age_s
        row.dropped_total = status.dropped_total
        row.equipment_connected, row.equipment_total = status.equipment_connected, status.equipment_total
        row.equipment_by_state = status.equipment_by_state
        row.last_seen = status.ts
        seen = _parse_ts(status.ts)
        row.last_seen_age_s = None if seen is None else round(now - seen, 1)
        if status.state == "offline":
            row.state = "offline"
            row.problems.append(f"offline ({status.cause or 'cause not given'})")
        else:
            limit = stale_after or STALE_FACTOR * (status.status_interval_s or DEFAULT_STATUS_INTERVAL)
            if row.last_seen_age_s is not None and row.last_seen_age_s > limit:
                row.state = "stale"
                row.problems.append(f"online status not refreshed for {row.last_seen_age_s:g}s (limit {limit:g}s)")
            else:
                row.state, row.online = "online", True
        if status.dropped_total is not None and status.dropped_total > row.dropped_baseline:
            row.losing_data = True
            since = f" since the baseline ({row.dropped_baseline})" if row.dropped_baseline else ""
            row.problems.append(f"lost {status.dropped_total - row.dropped_baseline} record(s){since}")
    for missing in range(max(0, (expect or 0) - len(rows))):
        rows.append(LineRow(line=f"?{missing + 1}", topic="", state="missing",
                            problems=[f"expected {expect} lines, found {len(statuses)}"]))
    return rows


def exit_code(rows: Sequence[LineRow]) -> int:
    if not rows:
        return EX_UNREACHABLE
    if any(not row.online for row in rows):
        return EX_OFFLINE
    if any(row.losing_data for row in rows):
        return EX_LOSING_DATA
    return EX_OK


def load_baseline(path: Path) -> dict[str, int]:
    """line -> dropped_total from an earlier `emsedge fleet --json` output. Raises ValueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(r["line"]): int(r["dropped_total"] or 0) for r in data["lines"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the baseline {path} (an earlier `emsedge fleet --json` output): {exc}") from None


# --- collecting ----------------------------------------------------------------------------------------


class Collector:
    """One read-only paho client that gathers retained statuses; its network thread is started and joined here."""

    def __init__(self, target: Any, depth: int) -> None:
        import os  # noqa: PLC0415

        from emsedge.watch import paho_client  # noqa: PLC0415

        self.target = target
        self.filters = status_filters(target.prefix, depth)
        self.statuses: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.subscription_refused: str | None = None
        self.last_message = time.monotonic()
        self.client = paho_client(target, f"emsedge-fleet-{os.getpid()}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = str(reason)
        else:  # QoS 0: a retained message needs no session; a QoS 1 subscription costs a durable consumer on NATS
            client.subscribe([(f, 0) for f in self.filters])
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any = None) -> None:
        with self.lock:
            self.last_message = time.monotonic()
            refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
            if len(refused) == len(self.filters):
                self.subscription_refused = refused[0]
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if not message.topic.endswith("/" + STATUS_SUFFIX):
            return
        with self.lock:
            self.last_message = time.monotonic()
            if message.payload:
                self.statuses[message.topic] = bytes(message.payload)
            else:  # an empty retained message deletes the status
                self.statuses.pop(message.topic, None)

    def collect(self, wait: float, expect: int | None) -> dict[str, bytes]:
        """Statuses received until quiet after the first, `expect` lines seen, or `wait` s after the SUBACK.

        Raises TimeoutError when the broker did not acknowledge the subscription within CONNECT_TIMEOUT.
        """
        if not self.subscribed.wait(CONNECT_TIMEOUT):
            raise TimeoutError(f"no SUBACK within {CONNECT_TIMEOUT:.0f} s")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self.lock:
                quiet_for = time.monotonic() - self.last_message
                seen = len(self.statuses)
            if (seen and quiet_for >= QUIET) or (expect is not None and seen >= expect):
                break
            time.sleep(0.02)
        with self.lock:
            return dict(self.statuses)

    def start(self) -> None:
        self.client.connect(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- output --------------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def render_table(rows: Sequence[LineRow]) -> str:
    header = ("LINE", "GATEWAY", "STATE", "VERSION", "BACKLOG", "OLDEST", "DROPPED", "EQUIPMENT", "LAST SEEN",
              "PROBLEMS")
    table = [header]
    for r in rows:
        state = r.state if r.cause is None else f"{r.state} ({r.cause})"
        equipment = "-" if r.equipment_total is None else f"{_cell(r.equipment_connected)}/{r.equipment_total}"
        last_seen = "-" if r.last_seen_age_s is None else f"{_age(r.last_seen_age_s)} ago"
        table.append((r.line, _cell(r.gateway), state, _cell(r.version), _cell(r.backlog),
                      _age(r.backlog_oldest_age_s) if r.backlog_oldest_age_s is not None else "-",
                      _cell(r.dropped_total), equipment, last_seen, "; ".join(r.problems)))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def as_json(rows: Sequence[LineRow], broker: str, prefix: str, code: int) -> dict[str, Any]:
    return {
        "broker": broker, "prefix": prefix, "exit_code": code,
        "summary": {
            "lines": len(rows), "online": sum(r.online for r in rows),
            "offline": sum(not r.online for r in rows), "losing_data": sum(r.losing_data for r in rows),
        },
        "lines": [asdict(r) for r in rows],
    }


# --- command -------------------------------------------------------------------------------------------


def _duration(text: str) -> float:
    from emsedge.config.types import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(text if text[-1:].isalpha() else f"{text}s", allow_zero=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    from emsedge.watch import add_broker_options  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="emsedge fleet", description=(
        "One row per line from every gateway's retained status under a prefix (read only). "
        "Exit 0 all online and not losing data, 1 no broker or no line, 3 a line offline, 4 a line losing data."))
    add_broker_options(parser, password_env="EMSEDGE_FLEET_PASSWORD")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (for scripts)")
    parser.add_argument("--wait", type=_duration, default=2.0,
                        help="longest time to collect retained statuses (default 2s; ends early when quiet)")
    parser.add_argument("--expect", type=int, default=None,
                        help="the number of lines there should be; fewer found counts as offline")
    parser.add_argument("--stale-after", type=_duration, default=None,
                        help="an online status older than this is stale (default 3x the line's status interval)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="an earlier --json output: only loss beyond its dropped_total counts as losing data")
    parser.add_argument("--depth", type=int, default=3,
                        help="topic levels between --prefix and a line's _gateway (default 3: site/area/line)")
    return parser.parse_args(argv)


def main_fleet(argv: list[str]) -> int:
    from emsedge.errors import ConfigError  # noqa: PLC0415
    from emsedge.watch import target_from  # noqa: PLC0415

    args = parse_args(argv)
    try:
        target = target_from(args, password_env="EMSEDGE_FLEET_PASSWORD")
        baseline = load_baseline(args.baseline) if args.baseline is not None else {}
    except ConfigError as exc:
        print(f"emsedge fleet: configuration {args.config} invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    except ValueError as exc:
        print(f"emsedge fleet: {exc}", file=sys.stderr)
        return EX_USAGE
    collector = Collector(target, args.depth)
    try:
        collector.start()
    except (OSError, ssl.SSLError) as exc:
        print(f"emsedge fleet: cannot reach {target.display}: {exc}", file=sys.stderr)
        return EX_UNREACHABLE
    try:
        if not collector.connected.wait(CONNECT_TIMEOUT):
            print(f"emsedge fleet: no answer from {target.display} within {CONNECT_TIMEOUT:.0f} s", file=sys.stderr)
            return EX_UNREACHABLE
        if collector.refused is not None:
            hint = (" (hint: this broker may speak only MQTT 3.1.1: add --protocol 3.1.1)"
                    if "protocol" in collector.refused.lower() else "")
            print(f"emsedge fleet: {target.display} refused the connection: {collector.refused}{hint}",
                  file=sys.stderr)
            return EX_UNREACHABLE
        try:
            statuses = collector.collect(args.wait, args.expect)
        except TimeoutError as exc:
            print(f"emsedge fleet: {target.display}: {exc}", file=sys.stderr)
            return EX_UNREACHABLE
        if collector.subscription_refused is not None:
            print(f"emsedge fleet: {target.display} refused every subscription ({collector.subscription_refused}); "
                  f"the user needs read access to {collector.filters[min(2, len(collector.filters) - 1)]}",
                  file=sys.stderr)
            return EX_UNREACHABLE
    finally:
        collector.stop()
    rows = assess(statuses, target.prefix, now=time.time(), stale_after=args.stale_after, baseline=baseline,
                  expect=args.expect)
    code = exit_code(rows)
    if args.json:
        sys.stdout.write(json.dumps(as_json(rows, target.display, target.prefix, code), indent=2) + "\n")
    elif rows:
        sys.stdout.write(render_table(rows) + "\n")
    if not rows:
        print(f"emsedge fleet: no gateway status under {target.prefix} on {target.display}", file=sys.stderr)
    return code


__all__ = ["LineRow", "assess", "exit_code", "main_fleet", "render_table", "status_filters"]
