"""`emsedge demo`: the whole product on one machine, with one command and no configuration.

    emsedge demo [--no-tui] [--duration S] [--port-base N]

It starts, in this order and in one anyio task group:

1. an MQTT broker on a free loopback port: mosquitto when it is installed, otherwise an embedded amqtt
   broker in this process (the `demo` extra, `pip install 'emsedge[demo]'`, so the demo needs no system
   package; the gateway itself does not carry it);
2. the virtual SMT line (config/virtual-line.yaml) in this process: OPC UA pick-and-place, Modbus TCP
   reflow oven, SECS/GEM AOI;
3. the gateway, `emsedge run -c config/demo.yaml`, as a child process (its own logs, its own signals),
   with the broker URL and a buffer in a temporary directory given through the environment, and that
   directory as its working directory (the in-circuit tester writes its logs into `./var/ict-1/out`
   there, which the gateway's `ict-1` reads); it serves the status page at http://127.0.0.1:9108/ (a
   free port when that one is taken, `EMSEDGE_HTTP__LISTEN` when set), and the demo prints the URL;
   with `--port-base` the line listens elsewhere and the gateway reads a copy of its config pointed there;
4. a view of what MES receives, subscribed to the gateway's topics: a live terminal screen (equipment
   states, latest values, faults, boards with placement, reflow, inspection and test result, messages/s,
   backlog), or with `--no-tui` one
   JSON line per message, `{"topic": ..., "payload": {...}}`.

Ctrl-C (or `--duration`) stops it in reverse order: the gateway first (it drains its buffer and publishes
`offline`), then the line and the broker; the temporary directory is removed. Logs of the line and the
gateway go to files in that directory, so they never tear the screen; the last lines of the gateway log
are printed if it fails.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

import anyio
import structlog
from anyio.abc import Process, TaskStatus

from emsedge.errors import ConfigError
from emsedge.packaged import find_file

log = structlog.get_logger("emsedge.demo")

GATEWAY_STOP_TIMEOUT = 20.0
STARTUP_TIMEOUT = 30.0
REFRESH = 0.5
CONNECT_WAIT = 20.0
"""Seconds the line's clock waits for the gateway to connect to every machine before it starts anyway."""


# ------------------------------------------------------------------------------------------------
# Files and ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, within: float) -> None:
    with anyio.fail_after(within):
        while True:
            try:
                with anyio.fail_after(1):
                    stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
            else:
                await stream.aclose()
                return


PAGE_PORT = 9108
"""The status page's usual port; when it is taken (a gateway runs here already) the demo picks a free one."""


def page_port() -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PAGE_PORT))
        except OSError:
            return free_port()
    return PAGE_PORT


def open_log(path: Path) -> IO[bytes]:
    """A child process's log file (opened before the await that starts the child)."""
    return open(path, "ab")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


# ------------------------------------------------------------------------------------------------
# Broker


@dataclass
class Broker:
    url: str
    kind: str
    mqtt_protocol: str


def missing_broker(kind: str) -> str | None:
    """Why the broker `kind` cannot run here, or None. The embedded broker comes with the `demo` extra,
    which the gateway itself (and its Docker image) does not install."""
    if kind == "mosquitto" and mosquitto_binary() is None:
        return "mosquitto is not installed; use --broker embedded"
    embedded = kind == "embedded" or (kind == "auto" and mosquitto_binary() is None)
    if embedded and importlib.util.find_spec("amqtt") is None:
        return ("the embedded MQTT broker needs the demo extra: pip install 'emsedge[demo]' "
                "(or `make demo`), or install mosquitto")
    return None


async def run_broker(workdir: Path, kind: str = "auto", *, task_status: TaskStatus[Broker]) -> None:
    """mosquitto when installed (or asked for), else amqtt in this event loop; stops when cancelled."""
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    binary = mosquitto_binary() if kind in ("auto", "mosquitto") else None
    if kind == "mosquitto" and binary is None:
        raise RuntimeError("mosquitto is not installed; use --broker embedded")
    if binary is not None:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                        "persistence false\nlog_type error\nlog_type warning\n")
        with open_log(workdir / "mosquitto.log") as out:
            process = await anyio.open_process([binary, "-c", str(conf)], stdout=out, stderr=out,
                                               start_new_session=True)
        try:
            await wait_for_port(port, 10)
            task_status.started(Broker(url, "mosquitto", "5"))
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await stop_process(process, signal.SIGTERM, 5)
        return
    from amqtt.broker import Broker as AmqttBroker  # noqa: PLC0415 - only without mosquitto

    broker = AmqttBroker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    try:
        task_status.started(Broker(url, "amqtt (embedded)", "3.1.1"))  # amqtt speaks MQTT 3.1.1 only
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await broker.shutdown()


async def stop_process(process: Process, sig: signal.Signals, grace: float) -> int | None:
    """Signal, wait up to `grace` seconds, then kill. Returns the exit status."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode


# ------------------------------------------------------------------------------------------------
# What MES receives


@dataclass
class BoardView:
    serial: str
    placed: str | None = None
    reels: int = 0
    reflow: str | None = None
    result: str | None = None
    defects: list[str] = field(default_factory=list)
    test: str | None = None


PREFERRED = [
    "board_serial", "placed_components", "pick_errors", "head_vacuum",
    "zone8_top_actual", "conveyor_speed", "o2_ppm", "boards_in_oven",
    "inspected_count", "fail_count", "light_level",
]


class MesView:
    """Everything the screen shows, built from the messages MES receives (thread-safe intake)."""

    def __init__(self, on_message: Callable[[str, Any], None] | None = None) -> None:
        self.on_message = on_message
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.total = 0
        self.events = 0
        self.duplicates = 0
        self.ids: set[str] = set()
        self.seqs: set[int] = set()
        self.arrivals: deque[float] = deque()
        self.status: dict[str, Any] = {}
        self.states: dict[str, str] = {}
        self.connected: dict[str, bool] = {}
        self.latest: dict[str, dict[str, tuple[Any, str | None]]] = {}
        self.faults: dict[str, tuple[str, str, str]] = {}
        self.boards: dict[str, BoardView] = {}
        self.recent: deque[str] = deque(maxlen=8)
        self.newest_ts: float | None = None  # wall-clock `ts` of the newest data message (not the status)

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            message: Any = json.loads(payload)
        except ValueError:
            message = payload.decode("utf-8", "replace")
        if self.on_message is not None:
            self.on_message(topic, message)
        if not isinstance(message, dict):
            return
        with self.lock:
            if topic.endswith("/_gateway/status"):
                self.status = message
                return
            if topic.endswith("/state"):  # retained machine state: not a numbered message
                return
            message_id = message.get("id")
            if message_id in self.ids:
                self.duplicates += 1
                return
            if isinstance(message_id, str):
                self.ids.add(message_id)
            self.total += 1
            now = time.monotonic()
            self.arrivals.append(now)
            if isinstance(message.get("seq"), int):
                self.seqs.add(message["seq"])
            if (stamp := _epoch(message.get("ts"))) is not None and (self.newest_ts is None or stamp > self.newest_ts):
                self.newest_ts = stamp
            equipment = str(message.get("equipment"))
            if isinstance(message.get("readings"), list):
                latest = self.latest.setdefault(equipment, {})
                for r in message["readings"]:
                    latest[r.get("signal")] = (r.get("value"), r.get("unit"))
                self.connected.setdefault(equipment, True)
            elif isinstance(message.get("event"), dict):
                self.events += 1
                self._event(equipment, message["event"], str(message.get("ts", ""))[11:19])

    def _event(self, equipment: str, ev: dict[str, Any], clock: str) -> None:
        kind = ev.get("type")
        serial = ev.get("serial")
        detail = ""
        if kind == "station_state_changed":
            self.states[equipment] = f"{ev.get('state_name')} ({ev.get('state')})"
            detail = str(ev.get("state_name"))
        elif kind == "connection_lost":
            self.connected[equipment] = False
            detail = str(ev.get("reason", ""))[:60]
        elif kind == "connection_restored":
            self.connected[equipment] = True
        elif kind == "fault_occurred":
            code = ev.get("fault_code", ev.get("alid"))
            text = ev.get("text") or ev.get("altx") or ev.get("message") or ""
            if not text and isinstance(ev.get("values"), dict):
                alarm_text = ev["values"].get("alarm_text")
                text = alarm_text.get("value") if isinstance(alarm_text, dict) else ""
            self.faults[str(ev.get("fault_occurrence_id"))] = (equipment, str(code), str(text or ""))
            detail = f"{code} {text or ''}"
        elif kind == "fault_cleared":
            self.faults.pop(str(ev.get("fault_occurrence_id")), None)
            detail = str(ev.get("fault_code", ev.get("alid")))
        elif serial and kind == "materials_installed":
            board = self._board(str(serial))
            board.placed = clock
            board.reels = sum(1 for name in (ev.get("values") or {}) if name.endswith("_reel_id"))
            detail = str(serial)
        elif serial and kind == "unit_processed":
            values = ev.get("values") or {}
            peaks: list[float] = [v["value"] for n, v in values.items()
                                  if n.endswith("_actual") and isinstance(v, dict)
                                  and isinstance(v.get("value"), int | float)]
            self._board(str(serial)).reflow = f"peak {max(peaks):.1f} Cel" if peaks else "done"
            detail = str(serial)
        elif serial and kind == "unit_inspected":
            board = self._board(str(serial))
            board.result = str(ev.get("result", "?")).upper()
            board.defects = [f"{d.get('refdes')}:{d.get('code')}" if isinstance(d, dict) else str(d)
                             for d in ev.get("defects") or []]
            detail = f"{serial} {board.result}"
        elif serial and kind == "unit_tested":
            board = self._board(str(serial))
            result = str(ev.get("result", "?")).upper()
            failed = [str(t) for t in ev.get("failed_tests") or []]
            verdict = result + (" " + ",".join(failed[:2]) if failed else "")
            board.test = verdict if board.test is None else f"{board.test} > {verdict}"  # a retest: both runs
            detail = f"{serial} {verdict}"
        if kind not in ("components_placed",):
            self.recent.appendleft(f"{clock} {equipment:<9} {kind} {detail}".rstrip())

    def _board(self, serial: str) -> BoardView:
        board = self.boards.get(serial)
        if board is None:
            board = self.boards[serial] = BoardView(serial)
            if len(self.boards) > 200:
                del self.boards[next(iter(self.boards))]
        return board

    def rate(self) -> float:
        now = time.monotonic()
        while self.arrivals and self.arrivals[0] < now - 5:
            self.arrivals.popleft()
        return len(self.arrivals) / min(5.0, max(0.5, now - self.started))

    def newest_age(self, now: float | None = None) -> float | None:
        """Seconds since the newest data message was stamped (its `ts`): how far behind MES is."""
        if self.newest_ts is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.newest_ts)

    def gaps(self) -> int:
        return (max(self.seqs) - min(self.seqs) + 1 - len(self.seqs)) if self.seqs else 0

    def render(self, header: str, width: int) -> list[str]:
        with self.lock:
            return self._render(header, width)

    def _render(self, header: str, width: int) -> list[str]:
        status = self.status
        gateway = status.get("state", "not seen yet")
        backlog = status.get("backlog")
        age = self.newest_age()
        lines = [
            header,
            f"messages {self.total} ({self.rate():.1f}/s)   events {self.events}   duplicates dropped "
            f"{self.duplicates}   seq gaps {self.gaps()}   gateway {gateway}"
            + (f", backlog {backlog}" if backlog is not None else "")
            + (f"   newest message {age:.1f} s old" if age is not None else "   no data message yet"),
            "",
            f"{'EQUIPMENT':<10} {'STATE':<26} {'LINK':<6} LATEST VALUES",
        ]
        for equipment in sorted(set(self.latest) | set(self.states) | set(self.connected)):
            if equipment == "_gateway":
                continue
            latest = self.latest.get(equipment, {})
            names = [n for n in PREFERRED if n in latest] or list(latest)[:4]
            values = "  ".join(f"{n}={_fmt(*latest[n])}" for n in names[:5])
            link = {True: "up", False: "DOWN"}.get(self.connected.get(equipment, True), "?")
            lines.append(f"{equipment:<10} {self.states.get(equipment, '-'):<26} {link:<6} {values}")
        lines += ["", f"ACTIVE FAULTS ({len(self.faults)})"]
        lines += [f"  {eq:<9} {code:<10} {text}" for eq, code, text in list(self.faults.values())[-5:]] or ["  none"]
        placing = sum(1 for b in self.boards.values() if b.reflow is None and b.result is None)
        lines += ["", f"{'BOARD':<18} {'PLACED':<16} {'REFLOW':<18} {'INSPECTION':<22} TEST"
                  f"      ({placing} more placed, in the oven or on the way)"]
        left = [b for b in self.boards.values() if b.reflow is not None or b.result is not None]
        for board in sorted(left, key=lambda b: b.serial)[-10:][::-1]:
            placed = f"{board.placed} {board.reels} reels" if board.placed else "-"
            result = board.result or "-"
            if board.defects:
                result += " " + ", ".join(board.defects[:3])
            lines.append(f"{board.serial:<18} {placed:<16} {board.reflow or '-':<18} {result:<22} {board.test or '-'}")
        lines += ["", "RECENT EVENTS", *[f"  {e}" for e in self.recent]]
        return [line[:width] for line in lines]


def _epoch(ts: object) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _fmt(value: Any, unit: str | None) -> str:
    if isinstance(value, float):
        value = f"{value:.1f}"
    elif isinstance(value, list):
        value = f"[{len(value)}]"
    return f"{value}{' ' + unit if unit else ''}"


def subscribe_view(view: MesView, url: str, prefix: str, protocol: str) -> Any:
    """A paho client (its network thread is owned by the caller: loop_stop() joins it)."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    port = int(url.rsplit(":", 1)[1])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"emsedge-demo-mes-{os.getpid()}",
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
    client.on_message = lambda c, u, msg: view.handle(msg.topic, bytes(msg.payload))
    client.reconnect_delay_set(1, 2)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


# ------------------------------------------------------------------------------------------------
# Gateway


async def run_gateway(config: Path, env: dict[str, str], log_path: Path, *,
                      task_status: TaskStatus[Process], cwd: Path | None = None) -> None:
    with open_log(log_path) as out:
        process = await anyio.open_process(
            [sys.executable, "-m", "emsedge.cli", "run", "-c", str(config)],
            stdout=out, stderr=out, env={**os.environ, **env}, start_new_session=True, cwd=cwd,
        )
    try:
        task_status.started(process)
        await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await stop_process(process, signal.SIGTERM, GATEWAY_STOP_TIMEOUT)


# ------------------------------------------------------------------------------------------------
# The command


def main_demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emsedge demo", description=(
        "Virtual SMT line + MQTT broker + gateway + a live view of what MES receives. Ctrl-C stops it."))
    parser.add_argument("--no-tui", action="store_true",
                        help="print each message MES receives as one JSON line instead of the live view")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--line", default="config/virtual-line.yaml", help="virtual line config")
    parser.add_argument("--config", default="config/demo.yaml", help="gateway config")
    parser.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                        help="auto: mosquitto when installed, else the embedded amqtt broker")
    parser.add_argument("--port-base", type=int, default=None, metavar="N",
                        help="run the line on ports N, N+1, N+2 instead of those in its config; 0: free ports")
    args = parser.parse_args(argv)
    if (missing := missing_broker(args.broker)) is not None:
        print(f"emsedge demo: {missing}", file=sys.stderr)
        return 1

    from emsedge.config import load_config  # noqa: PLC0415
    from emsedge.simulate import first_os_error, load_virtual_line, with_port_base  # noqa: PLC0415

    line_file, gateway_file = find_file(args.line), find_file(args.config).resolve()  # the gateway runs elsewhere
    try:
        line_config = with_port_base(load_virtual_line(line_file), args.port_base)
        gateway_config = load_config(gateway_file)
    except ValueError as exc:
        parser.error(f"--port-base: {exc}")
    except ConfigError as exc:
        print(f"emsedge demo: configuration invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 78
    tui = not args.no_tui and sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="emsedge-demo-") as tmp:
        workdir = Path(tmp)
        gateway_env: dict[str, str] = {}
        if args.port_base is not None:
            from emsedge.simulate.config import point_gateway_config  # noqa: PLC0415

            gateway_env = point_gateway_config(gateway_file, line_config, workdir / "gateway.yaml")
            gateway_file = workdir / "gateway.yaml"
        demo = Demo(line_config, gateway_file, gateway_config.topic_prefix, workdir, tui=tui,
                    duration=args.duration, broker=args.broker, gateway_env=gateway_env,
                    equipment_ids=[e.id for e in gateway_config.equipment if e.enabled])
        try:
            code = anyio.run(demo.run)
        except KeyboardInterrupt:
            code = 130
        except (OSError, BaseExceptionGroup) as exc:
            os_error = first_os_error(exc)
            if os_error is None:
                raise
            demo.restore_terminal()
            print(f"emsedge demo: cannot start: {os_error} (is `emsedge simulate` or another demo running? "
                  "the virtual line uses the ports in config/virtual-line.yaml; --port-base 0 picks free ones)",
                  file=sys.stderr)
            code = 1
        finally:
            demo.restore_terminal()
        if code not in (0, 130):
            _print_tail(workdir / "gateway.log", "gateway log")
            _print_tail(workdir / "line.log", "virtual line log")
        return code


def _print_tail(path: Path, title: str, lines: int = 15) -> None:
    tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
    if tail:
        print(f"--- last lines of the {title} ---", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


class Demo:
    def __init__(self, line_config: Any, gateway_file: Path, prefix: str, workdir: Path, *, tui: bool,
                 duration: float | None, broker: str = "auto", equipment_ids: list[str] | None = None,
                 gateway_env: dict[str, str] | None = None) -> None:
        self.broker_kind = broker
        self.gateway_env = gateway_env or {}
        self.equipment_ids = equipment_ids or []
        self.line_config = line_config
        self.gateway_file = gateway_file
        self.prefix = prefix
        self.workdir = workdir
        self.tui = tui
        self.duration = duration
        self.out: IO[str] = sys.stdout
        self.pending: deque[str] = deque()
        self.stop = anyio.Event()
        self._screen = False
        self.line_log: TextIO = open(workdir / "line.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in run()

    def _print_message(self, topic: str, payload: Any) -> None:
        self.pending.append(json.dumps({"topic": topic, "payload": payload}, ensure_ascii=False))

    async def run(self) -> int:
        from emsedge.config import LoggingConfig  # noqa: PLC0415
        from emsedge.logging import configure_logging  # noqa: PLC0415
        from emsedge.simulate import VirtualLine, quiet_libraries  # noqa: PLC0415

        line_log = self.line_log
        configure_logging(LoggingConfig(format="json"), stream=line_log)
        quiet_libraries()
        view = MesView(None if self.tui else self._print_message)
        client: Any = None
        code = 0
        try:
            async with anyio.create_task_group() as tg:
                broker: Broker = await tg.start(run_broker, self.workdir, self.broker_kind)
                line = VirtualLine(self._line_in_workdir(), hold=True)
                with anyio.fail_after(STARTUP_TIMEOUT):
                    await tg.start(line.run)
                client = await anyio.to_thread.run_sync(subscribe_view, view, broker.url, self.prefix,
                                                        broker.mqtt_protocol)
                env = {
                    **self.gateway_env,
                    "EMSEDGE_MQTT__URL": broker.url,
                    "EMSEDGE_MQTT__PROTOCOL": broker.mqtt_protocol,
                    "EMSEDGE_BUFFER__PATH": str(self.workdir / "buffer.db"),
                    "EMSEDGE_LOGGING__FORMAT": "json",
                    # an address given in the environment wins (e.g. a free port in a test suite)
                    "EMSEDGE_HTTP__LISTEN": os.environ.get("EMSEDGE_HTTP__LISTEN") or f"127.0.0.1:{page_port()}",
                }
                page = f"http://{env['EMSEDGE_HTTP__LISTEN']}/"
                gateway: Process = await tg.start(
                    functools.partial(run_gateway, cwd=self.workdir), self.gateway_file, env,
                    self.workdir / "gateway.log",
                )
                tg.start_soon(self._watch_signals)
                tg.start_soon(self._release_when_connected, line, view, gateway)
                if not self.tui:  # stdout carries the JSON lines; the page's address goes to stderr
                    print(f"emsedge demo: the line in your browser: {page}", file=sys.stderr, flush=True)
                header = (f"emsedge demo: virtual SMT line -> gateway -> {broker.kind} {broker.url} -> MES view"
                          f"   browser: {page}   (Ctrl-C stops)")
                code = await self._show(view, header, gateway)
                await stop_process(gateway, signal.SIGTERM, GATEWAY_STOP_TIMEOUT)
                if gateway.returncode not in (0, None, -signal.SIGTERM) and code == 0:
                    code = gateway.returncode or 1
                await anyio.sleep(0.3)  # the gateway's last messages reach the view
                self._flush()
                tg.cancel_scope.cancel()
        finally:
            if client is not None:
                client.loop_stop()
                client.disconnect()
            line_log.close()
        if self.tui:
            self.restore_terminal()
            print(f"emsedge demo stopped: {view.total} messages received, {view.events} events, "
                  f"{len(view.boards)} boards, {view.gaps()} seq gaps.")
        return code

    def _line_in_workdir(self) -> Any:
        """The line config with a relative tester folder moved into the temporary directory, where the
        gateway (which runs there) reads it."""
        ict = self.line_config.ict
        if ict.folder.is_absolute():
            return self.line_config
        return self.line_config.model_copy(update={"ict": ict.model_copy(update={"folder": self.workdir / ict.folder})})

    async def _release_when_connected(self, line: Any, view: MesView, gateway: Process) -> None:
        """Start the line's clock once MES sees every machine connected (or after CONNECT_WAIT)."""
        with anyio.move_on_after(CONNECT_WAIT):
            # The view is fed by paho's thread, so poll it rather than share an event across threads.
            while not all(view.connected.get(e) for e in self.equipment_ids) and gateway.returncode is None:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        line.release()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.stop.set()
                return

    async def _show(self, view: MesView, header: str, gateway: Process) -> int:
        if self.tui:
            self.out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hidden cursor
            self._screen = True
        deadline = None if self.duration is None else time.monotonic() + self.duration
        next_frame = 0.0
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if gateway.returncode is not None:
                return gateway.returncode or 1
            self._flush()
            now = time.monotonic()
            if self.tui and now >= next_frame:
                next_frame = now + REFRESH
                size = shutil.get_terminal_size((120, 40))
                frame = view.render(header, size.columns)[: size.lines - 1]
                self.out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in frame) + "\x1b[J")
                self.out.flush()
            with anyio.move_on_after(0.1):
                await self.stop.wait()
        return 0

    def _flush(self) -> None:
        if self.tui:
            self.pending.clear()
            return
        while self.pending:
            self.out.write(self.pending.popleft() + "\n")
        self.out.flush()

    def restore_terminal(self) -> None:
        if self._screen:
            self._screen = False
            self.out.write("\x1b[?25h\x1b[?1049l")
            self.out.flush()
