"""`emsedge watch`: the demo's live view of what MES receives, against any broker and topic prefix.

    emsedge watch --broker mqtts://broker.plant:8883 --prefix ems/plant-a/smt/line-1 \\
        --username tech --password-file ~/.mqtt-pass --ca-file plant-ca.pem
    emsedge watch -c /etc/emsedge/emsedge.yaml            # the broker, prefix, TLS and login of a gateway

It subscribes to `<prefix>/#` (read only: it never publishes) and shows per machine its state, link and
latest values, active faults, boards, recent events, the gateway's backlog (from its retained status
message) and how old the newest data message is. `--once` collects for `--wait` seconds (or until the
gateway's status and a data message arrived) and prints one frame, `--json` prints it as JSON: for
scripts, monitoring and tests. Exit status: 0 when something was received, 1 when not (or no broker).
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from emsedge.demo import MesView

EX_CONFIG = 78
CONNECT_TIMEOUT = 10.0
FRAME_EVERY = 5.0


@dataclass(frozen=True)
class Target:
    """Where to watch: one broker, one prefix, how to log in."""

    host: str
    port: int
    tls: bool
    prefix: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True
    protocol: str = "5"

    @property
    def display(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def add_broker_options(parser: argparse.ArgumentParser, password_env: str = "EMSEDGE_WATCH_PASSWORD") -> None:
    """-c, --broker, --prefix and the login/TLS options `target_from` reads (shared by watch and fleet)."""
    parser.add_argument("-c", "--config", type=Path, help="take broker, prefix, TLS and login from a gateway config")
    parser.add_argument("--broker", help="broker URL, mqtt://host:1883 or mqtts://host:8883")
    parser.add_argument("--prefix", help="topic prefix, e.g. ems/plant-a/smt/line-1")
    parser.add_argument("--username", help="broker user name")
    parser.add_argument("--password-file", type=Path,
                        help=f"file holding the broker password (or set {password_env})")
    parser.add_argument("--ca-file", type=Path, help="CA bundle that signed the broker certificate")
    parser.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--key-file", type=Path, help="client private key (mutual TLS)")
    parser.add_argument("--no-verify-hostname", action="store_true",
                        help="do not check that the certificate names the host (the chain is still checked)")
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default=None, help="MQTT version (default 5)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="emsedge watch", description=(
        "Live view of what MES receives from a line: states, values, faults, boards, backlog. Read only."))
    add_broker_options(parser)
    parser.add_argument("--once", action="store_true", help="collect, print one frame and exit")
    parser.add_argument("--json", action="store_true",
                        help="with --once: the frame as JSON; without: every message as one JSON line")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="with --once: the longest time to collect before printing (seconds, default 5)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser.parse_args(argv)


def target_from(args: argparse.Namespace, password_env: str = "EMSEDGE_WATCH_PASSWORD") -> Target:
    """The broker and prefix from the options, filling gaps from `-c FILE`. Raises ValueError."""
    url, prefix, username, password = args.broker, args.prefix, args.username, None
    ca, cert, key, verify, protocol = args.ca_file, args.cert_file, args.key_file, not args.no_verify_hostname, None
    if args.config is not None:
        from emsedge.config import load_config, read_secret  # noqa: PLC0415

        settings = load_config(args.config)
        mqtt = settings.mqtt
        url = url or mqtt.urls[0]
        prefix = prefix or settings.topic_prefix
        username = username or mqtt.username
        password = read_secret(mqtt.password, mqtt.password_file)
        if mqtt.tls is not None:
            ca, cert, key = ca or mqtt.tls.ca_file, cert or mqtt.tls.cert_file, key or mqtt.tls.key_file
            verify = verify and mqtt.tls.verify_hostname
        protocol = mqtt.protocol
    if not url or not prefix:
        raise ValueError("give --broker and --prefix (or -c FILE of a gateway config)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError(f"{url!r} is not a broker URL; write mqtt://host:1883 or mqtts://host:8883")
    tls = scheme in ("mqtts", "ssl")
    if parts.username:
        username = unquote(parts.username)
    if parts.password:
        password = unquote(parts.password)
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ValueError(f"cannot read the password file {args.password_file}: {exc}") from None
    password = os.environ.get(password_env, password)
    return Target(
        host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls, prefix=prefix.strip("/"),
        username=username, password=password, ca_file=ca, cert_file=cert, key_file=key, verify_hostname=verify,
        protocol=args.protocol or protocol or "5",
    )


def paho_client(target: Target, client_id: str) -> Any:
    """A paho client for `target` (protocol, login, TLS with verification), not yet connected."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id,
        protocol=mqtt.MQTTv5 if target.protocol == "5" else mqtt.MQTTv311,
    )
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        context = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
        if target.cert_file:
            context.load_cert_chain(str(target.cert_file), str(target.key_file) if target.key_file else None)
        context.check_hostname = target.verify_hostname
        client.tls_set_context(context)
    return client


class Watcher:
    """One paho client feeding a MesView; its network thread is started and joined here."""

    def __init__(self, target: Target, view: MesView) -> None:
        self.target = target
        self.view = view
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.client = paho_client(target, f"emsedge-watch-{os.getpid()}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, msg: view.handle(msg.topic, bytes(msg.payload))
        self.client.reconnect_delay_set(1, 5)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = str(reason)
            self.connected.set()
            return
        self.refused = None
        client.subscribe(f"{self.target.prefix}/#", qos=1)
        self.connected.set()

    def start(self) -> None:
        self.client.connect(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def frame(view: MesView, target: Target) -> dict[str, Any]:
    """What `--once --json` prints: the view as data."""
    with view.lock:
        age = view.newest_age()
        machines = sorted((set(view.latest) | set(view.states) | set(view.connected)) - {"_gateway"})
        return {
            "broker": target.display,
            "prefix": target.prefix,
            "messages": view.total,
            "events": view.events,
            "seq_gaps": view.gaps(),
            "gateway": view.status.get("state"),
            "backlog": view.status.get("backlog"),
            "backlog_oldest_age_s": view.status.get("backlog_oldest_age_s"),
            "newest_message_age_s": None if age is None else round(age, 3),
            "equipment": {
                m: {
                    "state": view.states.get(m),
                    "link": {True: "up", False: "down"}.get(view.connected.get(m, True)),
                    "latest": {name: value for name, (value, _unit) in view.latest.get(m, {}).items()},
                }
                for m in machines
            },
            "active_faults": [
                {"equipment": eq, "fault_code": code, "text": text} for eq, code, text in view.faults.values()
            ],
        }


def main_watch(argv: list[str]) -> int:
    import json  # noqa: PLC0415

    from emsedge.errors import ConfigError  # noqa: PLC0415

    args = parse_args(argv)
    try:
        target = target_from(args)
    except ConfigError as exc:
        print(f"emsedge watch: configuration {args.config} invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    except ValueError as exc:
        print(f"emsedge watch: {exc}", file=sys.stderr)
        return 2
    stream = args.json and not args.once

    def print_message(topic: str, payload: Any) -> None:
        sys.stdout.write(json.dumps({"topic": topic, "payload": payload}, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    view = MesView(print_message if stream else None)
    watcher = Watcher(target, view)
    try:
        watcher.start()
    except (OSError, ssl.SSLError) as exc:
        print(f"emsedge watch: cannot reach {target.display}: {exc}", file=sys.stderr)
        return 1
    try:
        if not watcher.connected.wait(CONNECT_TIMEOUT):
            print(f"emsedge watch: no answer from {target.display} within {CONNECT_TIMEOUT:.0f} s", file=sys.stderr)
            return 1
        if watcher.refused is not None:
            print(f"emsedge watch: {target.display} refused the connection: {watcher.refused}", file=sys.stderr)
            return 1
        if args.once:
            return _once(view, watcher, target, args)
        tui = not stream and sys.stdout.isatty()
        return _live(view, target, args, tui=tui, frames=not stream and not tui)
    except KeyboardInterrupt:
        return 130
    finally:
        watcher.stop()


def _once(view: MesView, watcher: Watcher, target: Target, args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    deadline = time.monotonic() + args.wait
    watcher.subscribed.wait(max(0.0, deadline - time.monotonic()))
    # Retained status arrives at once; then wait for a data message or the deadline.
    while time.monotonic() < deadline and not (view.status and view.total):
        time.sleep(0.05)
    if args.json:
        sys.stdout.write(json.dumps(frame(view, target), indent=2, default=str) + "\n")
    else:
        width = shutil.get_terminal_size((120, 40)).columns if sys.stdout.isatty() else 1000
        sys.stdout.write("\n".join(view.render(_header(target), width)) + "\n")
    return 0 if (view.status or view.total) else 1


def _live(view: MesView, target: Target, args: argparse.Namespace, *, tui: bool, frames: bool) -> int:
    """The live screen on a terminal; elsewhere (a pipe, a log) a plain frame every FRAME_EVERY seconds."""
    deadline = None if args.duration is None else time.monotonic() + args.duration
    out = sys.stdout
    next_frame = time.monotonic() + FRAME_EVERY
    if tui:
        out.write("\x1b[?1049h\x1b[?25l")
    try:
        while deadline is None or time.monotonic() < deadline:
            if tui:
                size = shutil.get_terminal_size((120, 40))
                lines = view.render(_header(target), size.columns)[: size.lines - 1]
                out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
                out.flush()
            elif frames and time.monotonic() >= next_frame:
                next_frame += FRAME_EVERY
                out.write("\n".join(view.render(_header(target), 1000)) + "\n\n")
                out.flush()
            time.sleep(0.5)
    finally:
        if tui:
            out.write("\x1b[?25h\x1b[?1049l")
            out.flush()
    return 0 if (view.status or view.total) else 1


def _header(target: Target) -> str:
    return f"emsedge watch: {target.display} {target.prefix}/#   (read only; Ctrl-C stops)"


__all__ = ["Target", "Watcher", "frame", "main_watch", "paho_client", "target_from"]
