"""Real parts for tests: a mosquitto broker on a free port and an MQTT subscriber that records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run `make test`, which installs it")
    return found


@dataclass
class Mosquitto:
    """A real mosquitto broker on a free loopback port that tests may stop and start again."""

    workdir: Path
    port: int = field(default_factory=free_port)
    persistence: bool = False
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # Count every message in tests: the default 1000 silently drops QoS 1 for slow subscribers.
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"persistence_file mosquitto-{self.port}.db",
            "autosave_interval 1",
            # As root, mosquitto switches to its own user, which cannot write the persistence file here.
            *(["user root"] if os.geteuid() == 0 else []),
            "log_type error",
            "log_type warning",
            self.extra_config,
        ]
        conf.write_text("\n".join(lines) + "\n")
        with open(self.workdir / f"mosquitto-{self.port}.log", "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


CONTRACT_TOPICS = ("telemetry", "events", "state", "status")


def contract_violation(topic: str, payload: bytes) -> str | None:
    """Why a message the gateway sent breaks the MES contract (emsedge.contract.check_message), else None.

    Only messages that claim to be emsedge's are checked (an `emsedge/` schema, or an empty retained
    state): tests also publish their own markers and raw payloads through the broker.
    """
    from emsedge.contract import check_message  # noqa: PLC0415 - keeps support importable on its own

    kind = topic.rsplit("/", 1)[-1]
    if kind not in CONTRACT_TOPICS:
        return None
    if not (payload.startswith(b'{"schema":"emsedge/') or (payload == b"" and kind == "state")):
        return None
    if payload.startswith(b'{"schema":"emsedge/event@1"'):
        return None  # encoded by a previous release and replayed from its buffer: valid under @1
    try:
        check_message(topic, payload)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return f"{topic}: {exc}"
    return None


class Subscriber:
    """Collects every message under a topic filter (QoS 1, persistent session so restarts lose nothing).

    Every emsedge message it receives is validated against the contract; `close()` fails the test when
    one did not (`violations` lists them).
    """

    def __init__(self, port: int, topic: str = "#", client_id: str | None = None, clean: bool = True) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{port}-{time.monotonic_ns()}",
            clean_session=clean,
        )
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("test subscriber could not connect")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        violation = contract_violation(msg.topic, msg.payload)
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            if violation is not None:
                self.violations.append(violation)

    def payloads(self, suffix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            items = list(self.messages)
        out = []
        for topic, payload, _ in items:
            if topic.endswith(suffix):
                try:
                    out.append(json.loads(payload))
                except ValueError:
                    continue
        return out

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0,
                 suffix: str = "") -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.payloads(suffix)
            if predicate(got):
                return got
            time.sleep(0.05)
        got = self.payloads(suffix)
        raise AssertionError(f"condition not met within {timeout}s; {len(got)} messages received")

    def sync(self, timeout: float = 60.0) -> None:
        """Return once every message the broker accepted before this call has reached this subscriber.

        Publishes a marker to a topic this subscriber listens to and waits for it to come back: the broker
        queues messages for a subscriber in the order it accepted them, so the marker arrives last.
        """
        marker = f"sync-{time.monotonic_ns()}"
        topic = "/".join("_sync" if level in ("#", "+") else level for level in self.topic.split("/"))
        self.client.publish(topic, json.dumps({"sync": marker}), qos=1)
        self.wait_for(lambda got: any(p.get("sync") == marker for p in got), timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        # paho closes its wake-up socket pair only in Client.__del__; the client sits in a reference cycle
        # (its callbacks are this object's methods), so the garbage collector may finalise those sockets
        # first, and a ResourceWarning at an arbitrary later moment fails whatever test is running then.
        self.client._reset_sockets()
        assert not self.violations, f"{len(self.violations)} message(s) break the contract: {self.violations[:3]}"


def seq_report(payloads: list[dict[str, Any]], *, last: int | None = None, first: int | None = None,
               accounted: set[int] | frozenset[int] = frozenset()) -> tuple[list[int], int, list[int]]:
    """(sorted unique seqs, duplicates count, missing seqs).

    Missing means: between `first` (default: the lowest received) and `last` (default: the highest
    received), neither received nor in `accounted` (e.g. still in the gateway's buffer). Pass the last seq
    the gateway assigned as `last` so that loss at the tail counts too (support.daemon.buffer_seqs).
    """
    seqs = [p["seq"] for p in payloads if "seq" in p]
    unique = sorted(set(seqs))
    low = first if first is not None else (unique[0] if unique else 1)
    high = last if last is not None else (unique[-1] if unique else 0)
    missing = sorted(set(range(low, high + 1)) - set(unique) - set(accounted))
    return unique, len(seqs) - len(unique), missing
