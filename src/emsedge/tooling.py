"""Technician commands: `config-schema`, `check-config --online` and `buffer stats|export|purge`.

`check-config --online` builds each enabled adapter exactly as the gateway would and reads once:
* an adapter with `read_once()` (Modbus) does connect, poll, close;
* any other `PolledAdapter` is entered and polled once;
* a `PushAdapter` (OPC UA subscriptions, HSMS) runs under a deadline until it hands over its first
  telemetry, reports a lost connection, or the deadline passes. Connected without values is reported
  as "connected; no one-shot read" and is not a failure; not reaching the endpoint is.
It also connects and logs in to every broker URL of `mqtt` (TLS and credentials as the gateway uses
them) and disconnects without publishing. Log lines of the protocol libraries (asyncua, pymodbus, ...)
written while a machine is checked are grouped under that machine instead of interleaving on stderr.
Nothing is written to the equipment, the buffer or the broker. Exit status 0 only when every enabled
piece of equipment answered, every signal read with good quality and a broker accepted the login.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from emsedge.config import EquipmentBase, LoggingConfig, Settings
from emsedge.config.loader import available_profiles
from emsedge.errors import AdapterError, BufferError, ConfigError, EmsedgeError
from emsedge.schema import EventType, Record

ONLINE_TIMEOUT = 15.0
"""Deadline for one piece of equipment in `check-config --online` (connect and first values)."""

SCHEMA_ID = "https://emsedge.invalid/config.schema.json"


# ---------------------------------------------------------------------------------------------------
# config-schema


def config_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the YAML config, for editors (VS Code YAML) and CI checks.

    An equipment entry with `profile:` gets its remaining fields from the profile, so such an entry needs
    only `id` and `profile` (one of the shipped profile names); what else it holds overrides the profile
    and is checked like the adapters' fields, partially: no field is required, unknown fields are refused.
    """
    schema = Settings.model_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    items = schema["properties"]["equipment"]["items"]
    models = [defs[ref["$ref"].rsplit("/", 1)[1]] for ref in items.get("oneOf", [items]) if "$ref" in ref]
    fields: dict[str, list[Any]] = {}
    for model in models:
        for name, prop in model.get("properties", {}).items():
            if name not in ("adapter", "profile"):
                fields.setdefault(name, []).append(_partial(prop, defs))
    properties: dict[str, Any] = {name: _one_of(options) for name, options in sorted(fields.items())}
    properties["profile"] = {
        "type": "string",
        "description": "Equipment profile merged under this entry (<type>/<model>; a profile of your own "
        "in an adapters/ folder beside the config works too).",
        "examples": available_profiles(),
    }
    properties["adapter"] = {"type": "string", "description": "Normally given by the profile."}
    schema["properties"]["equipment"]["items"] = {
        "anyOf": [
            items,
            {
                "type": "object",
                "title": "Equipment from a profile",
                "description": "An entry whose remaining fields come from `profile: <type>/<model>`. Shipped "
                "profiles: " + ", ".join(available_profiles()) + ".",
                "required": ["id", "profile"],
                "properties": properties,
                "additionalProperties": False,
            },
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def _partial(prop: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """`prop` with nothing required (an override of a profile), following $refs two levels deep.

    List items keep `name` required (profile signals merge by name) and may say `remove: true`.
    """
    if not isinstance(prop, dict) or depth > 2:
        return prop
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rsplit("/", 1)[1])
        if not isinstance(target, dict) or target.get("type") != "object":
            return prop
        prop = {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
    out = dict(prop)
    if out.get("type") == "object" and "properties" in out:
        out.pop("required", None)
        out["properties"] = {k: _partial(v, defs, depth + 1) for k, v in out["properties"].items()}
        out.pop("title", None)
    if out.get("type") == "array" and "items" in out:
        item = _partial(out["items"], defs, depth + 1)
        if isinstance(item, dict) and "name" in item.get("properties", {}):
            item = {**item, "required": ["name"], "properties": {
                **item["properties"], "remove": {"type": "boolean", "description": "Drop this item of the profile."}
            }}
        out["items"] = item
    for key in ("anyOf", "oneOf"):
        if key in out:
            out[key] = [_partial(o, defs, depth) for o in out[key]]
    return out


def _one_of(options: list[Any]) -> Any:
    unique: list[Any] = []
    for option in options:
        if option not in unique:
            unique.append(option)
    return unique[0] if len(unique) == 1 else {"anyOf": unique}


def render_schema() -> str:
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"


def main_config_schema(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emsedge config-schema",
        description="Print the JSON Schema of the config. Reference it from a config file with "
        "'# yaml-language-server: $schema=<path or URL>' for completion and inline errors.",
    )
    parser.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render_schema()
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------------------------------------
# check-config --online


@dataclass
class OnlineResult:
    equipment: str
    adapter: str
    readings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    seconds: float = 0.0
    library_log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.get("quality") == "good" for r in self.readings)


_CHECKING: ContextVar[str | None] = ContextVar("emsedge_checking_equipment", default=None)


class _GroupByEquipment(logging.Handler):
    """Collects stdlib log records (the protocol libraries') by the machine being checked in that task."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        equipment = _CHECKING.get()
        if equipment is not None:
            line = f"{record.levelname.lower():<8} {record.name}: {record.getMessage()}"
            self.lines.setdefault(equipment, []).append(line[:300])


def _not_while_checking(record: logging.LogRecord) -> bool:
    return _CHECKING.get() is None


@contextmanager
def _grouped_library_logs() -> Iterator[_GroupByEquipment]:
    """While it is active, stdlib records emitted inside a machine's check go to its group, not to stderr."""
    root = logging.getLogger()
    grouping = _GroupByEquipment()
    others = list(root.handlers)
    for handler in others:
        handler.addFilter(_not_while_checking)
    root.addHandler(grouping)
    try:
        yield grouping
    finally:
        root.removeHandler(grouping)
        for handler in others:
            handler.removeFilter(_not_while_checking)


@dataclass
class BrokerResult:
    url: str
    ok: bool
    detail: str


def check_broker(settings: Settings, deadline: float | None = None) -> list[BrokerResult]:
    """Connect and log in to each broker URL as the gateway would (TLS, user, password); publish nothing."""
    limit = deadline if deadline is not None else settings.mqtt.connect_timeout
    return [_check_one_broker(settings, url, limit) for url in settings.mqtt.urls]


def _check_one_broker(settings: Settings, url: str, limit: float) -> BrokerResult:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from emsedge.config import read_secret  # noqa: PLC0415
    from emsedge.publish.mqtt import _parse_broker, _tls_context  # noqa: PLC0415

    config = settings.mqtt
    broker = _parse_broker(url)
    username = broker.username or config.username
    password = broker.password.reveal() if broker.password else read_secret(config.password, config.password_file)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.client_id}-check-{os.getpid()}",
                         protocol=mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311)
    answered = threading.Event()
    refusal: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            refusal.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    if username is not None:
        client.username_pw_set(username, password)
    who = f" as {username}" if username else " (anonymous)"
    try:
        if broker.tls:
            client.tls_set_context(_tls_context(config))
        client.connect(broker.host, broker.port, keepalive=max(5, int(config.keepalive)))
    except (OSError, ssl.SSLError) as exc:
        return BrokerResult(broker.display, False, f"cannot connect: {exc}")
    except ConfigError as exc:
        return BrokerResult(broker.display, False, "; ".join(exc.problems))
    client.loop_start()
    try:
        if not answered.wait(limit):
            return BrokerResult(broker.display, False, f"no CONNACK within {limit:g}s")
        if refusal:
            return BrokerResult(broker.display, False, f"refused the login{who}: {refusal[0]}")
        return BrokerResult(broker.display, True, f"connected and logged in{who}")
    finally:
        client.disconnect()
        client.loop_stop()


def _readings(records: Sequence[Record]) -> list[dict[str, Any]]:
    return [r for rec in records if rec.kind == "telemetry" for r in rec.body.get("readings", [])]


async def read_equipment(equipment: EquipmentBase, deadline: float = ONLINE_TIMEOUT) -> OnlineResult:
    """Read every signal of one piece of equipment once through its adapter (see module docstring)."""
    from emsedge.adapters import spec_for  # noqa: PLC0415
    from emsedge.adapters.base import AdapterContext, PolledAdapter, PushAdapter  # noqa: PLC0415
    from emsedge.adapters.spec import ReadsOnce  # noqa: PLC0415

    result = OnlineResult(equipment.id, equipment.adapter)
    started = time.monotonic()
    emitted: list[Record] = []
    got_values = anyio.Event()
    lost: list[str] = []

    async def emit(records: Sequence[Record]) -> None:
        emitted.extend(records)
        for rec in records:
            if rec.kind == "event" and rec.event_type == EventType.CONNECTION_LOST:
                lost.append(str(rec.body["event"].get("reason", "connection lost")))
                got_values.set()
        if any(r.get("quality") == "good" for r in _readings(records)):
            got_values.set()

    ctx = AdapterContext(equipment=equipment, emit=emit)
    try:
        adapter = spec_for(equipment.adapter).build(equipment, ctx)
        with anyio.fail_after(deadline):
            if isinstance(adapter, ReadsOnce):
                result.readings = list(await adapter.read_once())
            elif isinstance(adapter, PolledAdapter):
                async with adapter:
                    result.readings = _readings(await adapter.poll())
            elif isinstance(adapter, PushAdapter):
                push = adapter

                async def one_session() -> None:
                    try:
                        await push.session(ctx)
                    except AdapterError as exc:
                        lost.append(str(exc))
                        got_values.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(one_session)
                    with anyio.move_on_after(deadline - 0.5):
                        await got_values.wait()
                    tg.cancel_scope.cancel()
                good = [r for r in _readings(emitted) if r.get("quality") == "good"]
                if good:
                    latest = {r["signal"]: r for r in good}
                    result.readings = list(latest.values())
                elif lost:
                    result.error = lost[0]
                elif ctx.health.connected:
                    result.note = "connected; no one-shot read for this adapter (no values within the deadline)"
                else:
                    result.error = f"no connection within {deadline:g}s"
            else:
                result.note = "not supported"
    except TimeoutError:
        result.error = f"no answer within {deadline:g}s"
    except (EmsedgeError, OSError, KeyError, TypeError, ValueError) as exc:
        result.error = str(exc) or type(exc).__name__
    result.seconds = time.monotonic() - started
    return result


def print_table(results: Sequence[OnlineResult], out: TextIO) -> None:
    rows: list[tuple[str, ...]] = [("EQUIPMENT", "SIGNAL", "VALUE", "UNIT", "QUALITY")]
    for res in results:
        if res.error is not None:
            rows.append((res.equipment, "-", f"FAILED: {res.error}", "", "bad"))
        elif res.note is not None and not res.readings:
            rows.append((res.equipment, "-", res.note, "", ""))
        for r in res.readings:
            quality = str(r.get("quality", "?"))
            status = r.get("status")
            if status and quality != "good":
                quality += f" ({status})"
            value = r.get("value")
            if value is None or value == "":
                text = "null" if value is None else '""'
            else:
                text = f"{value:.6g}" if isinstance(value, float) else str(value)
            rows.append((res.equipment, str(r.get("signal", "?")), text, str(r.get("unit") or ""), quality))
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(5)]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


async def check_online(settings: Settings, deadline: float = ONLINE_TIMEOUT) -> list[OnlineResult]:
    """Read all enabled equipment concurrently (the slowest one bounds the wait); results in config order."""
    enabled = [e for e in settings.equipment if e.enabled]
    results: list[OnlineResult | None] = [None] * len(enabled)

    async def one(i: int, equipment: EquipmentBase) -> None:
        _CHECKING.set(equipment.id)  # this task's context: tasks it starts inherit it
        results[i] = await read_equipment(equipment, deadline)

    with _grouped_library_logs() as grouping:
        async with anyio.create_task_group() as tg:
            for i, equipment in enumerate(enabled):
                tg.start_soon(one, i, equipment)
    done = [r for r in results if r is not None]
    for r in done:
        r.library_log = grouping.lines.get(r.equipment, [])
    return done


def main_check_online(settings: Settings, *, timeout: float = ONLINE_TIMEOUT, out: TextIO | None = None) -> int:
    from emsedge.logging import configure_logging  # noqa: PLC0415

    out = out or sys.stdout
    configure_logging(LoggingConfig(level="warning", format=settings.logging.format), stream=sys.stderr)
    brokers = check_broker(settings)
    out.write("\n")
    for b in brokers:
        out.write(f"broker  {b.url}: {'OK, ' if b.ok else 'FAILED: '}{b.detail}\n")
    broker_ok = any(b.ok for b in brokers)
    if settings.cfx is not None:
        from emsedge.publish.cfx import probe, redact_url  # noqa: PLC0415 - optional extra emsedge[cfx]

        cfx_ok, detail = probe(settings.cfx, settings.cfx.connect_timeout)
        out.write(f"cfx     {redact_url(settings.cfx.broker)}: {'OK, ' if cfx_ok else 'FAILED: '}{detail}\n")
        broker_ok = broker_ok and cfx_ok
    if not any(e.enabled for e in settings.equipment):
        out.write("online check: no enabled equipment\n")
        return 0 if broker_ok else 1
    results = anyio.run(check_online, settings, timeout)
    out.write("\n")
    print_table(results, out)
    for r in results:
        if r.library_log:
            out.write(f"\n{r.equipment}: {len(r.library_log)} library message(s) during its check\n")
            out.writelines(f"  {line}\n" for line in r.library_log[-20:])
    failed = [r for r in results if not r.ok]
    out.write(
        f"\nonline check: {len(results) - len(failed)} of {len(results)} equipment OK"
        + (f"; failed: {', '.join(r.equipment for r in failed)}" if failed else "")
        + ("" if broker_ok else "; broker: FAILED")
        + "\n"
    )
    return 1 if failed or not broker_ok else 0


# ---------------------------------------------------------------------------------------------------
# buffer stats | export | purge


DEFAULT_BUFFER = Path("/var/lib/emsedge/buffer.db")


def buffer_path(config: Path | None, path: Path | None) -> Path:
    """The buffer file a command works on: `--path`, else the config's `buffer.path`, else the default.

    Raises ConfigError when the config is invalid.
    """
    if path is not None:
        return path
    if config is None:
        return DEFAULT_BUFFER
    from emsedge.config import load_config  # noqa: PLC0415

    return load_config(config).buffer.path


def backup(source: Path, dest: Path) -> int:
    """Copy a buffer file with SQLite's online backup API: a consistent snapshot while the gateway writes.

    The copy is written beside `dest` and renamed into place, so `dest` is never half a file. The seq
    sidecar (`<file>.seq`) is copied too, and the metas of compact telemetry (`<file>.metas/`) after the
    snapshot (a meta is on disk before any record names it, so the copy holds every meta its records name).
    Returns the number of records in the copy.
    """
    if not source.is_file():
        raise BufferError(f"no buffer file at {source}")
    if dest.is_dir():
        dest = dest / source.name
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        out = sqlite3.connect(partial)
        try:
            src.backup(out, pages=1024)  # in steps: the gateway's writer is never held up for long
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            count = int(out.execute("SELECT count(*) FROM records").fetchone()[0])
        finally:
            out.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BufferError(f"cannot back up {source}: {exc}") from None
    finally:
        src.close()
    os.replace(partial, dest)
    sidecar = source.with_name(source.name + ".seq")
    if sidecar.is_file():
        shutil.copyfile(sidecar, dest.with_name(dest.name + ".seq"))
    metas = source.with_name(source.name + ".metas")
    if metas.is_dir():
        shutil.copytree(metas, dest.with_name(dest.name + ".metas"), dirs_exist_ok=True)
    return count


def main_buffer(argv: list[str]) -> int:
    from emsedge import buffer  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="emsedge buffer", description="Inspect the local buffer file.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (
        ("stats", "counts: records, bytes, oldest, seq, evictions, dead letters"),
        ("export", "every record as one JSON object per line, oldest first"),
        ("purge", "delete buffered records (data loss: the gateway must be stopped)"),
        ("backup", "copy the buffer file to DEST, consistent even while the gateway runs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", type=Path, default=None,
                       help="gateway config: work on the buffer file it names (buffer.path)")
        p.add_argument("--path", type=Path, default=None, help=f"buffer file (default: {DEFAULT_BUFFER})")
        if name == "stats":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("export", "purge"):
            p.add_argument("--dead-letters", action="store_true", help="only the dead letters")
        if name == "purge":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if name == "backup":
            p.add_argument("dest", type=Path, help="file (or folder) to write the copy to")
    args = parser.parse_args(argv)
    try:
        path = buffer_path(args.config, args.path)
    except ConfigError as exc:
        sys.stderr.write(f"emsedge buffer: configuration {args.config} invalid:\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        return 78
    try:
        if args.action == "stats":
            stats = buffer.file_stats(path)
            if args.json:
                sys.stdout.write(json.dumps(stats, indent=2, default=str) + "\n")
            else:
                oldest = stats.get("oldest_created")
                stats = {**stats, "oldest_age_s": round(time.time() - oldest, 1) if oldest else None}
                for key, value in stats.items():
                    sys.stdout.write(f"{key:<22} {value}\n")
        elif args.action == "export":
            for item in buffer.export(path, dead_letters=args.dead_letters):
                sys.stdout.write(json.dumps(item, default=str) + "\n")
        elif args.action == "backup":
            count = backup(path, args.dest)
            sys.stdout.write(f"backed up {path} to {args.dest} ({count} records waiting in the copy)\n")
        else:
            what = "dead letters" if args.dead_letters else "ALL buffered records and dead letters"
            if not args.yes:
                if not sys.stdin.isatty():
                    sys.stderr.write("emsedge buffer purge: refusing without --yes when not on a terminal\n")
                    return 2
                answer = input(f"Delete {what} in {path}? This loses data. Type 'purge': ")
                if answer.strip() != "purge":
                    sys.stderr.write("not purged\n")
                    return 1
            n = buffer.purge(path, dead_letters_only=args.dead_letters)
            sys.stdout.write(f"purged {n} rows from {path}\n")
    except BufferError as exc:
        sys.stderr.write(f"emsedge buffer: {exc}\n")
        return 1
    except BrokenPipeError:  # `emsedge buffer export | head`
        return 0
    return 0


__all__ = [
    "BrokerResult",
    "OnlineResult",
    "backup",
    "buffer_path",
    "check_broker",
    "check_online",
    "config_schema",
    "main_buffer",
    "main_check_online",
    "main_config_schema",
    "read_equipment",
    "render_schema",
]
