"""The gateway as a real subprocess (`emsedge run -c FILE`) with a real Modbus equipment process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support import REPO, free_port, wait_for_port

EMSEDGE = str(Path(sys.executable).with_name("emsedge"))


class Equipment:
    """`tests/support/equipment_process.py` on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "support" / "equipment_process.py"), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def gateway_config(tmp: Path, broker_url: str | list[str], equipment_port: int, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "gateway": {"id": "test-gw", "site": "plant-t", "area": "smt", "line": "line-t"},
        "mqtt": {"url": broker_url, "qos": 1, "keepalive": "2s", "connect_timeout": "2s",
                 "backoff": {"initial": "100ms", "max": "500ms"}},
        "buffer": {"path": str(tmp / "buffer.db"), "linger": "5ms"},
        "http": {"listen": None},
        "logging": {"format": "json", "level": "info"},
        "equipment": [{
            "id": "reflow-1", "type": "reflow_oven", "adapter": "modbus",
            "connection": {"host": "127.0.0.1", "port": equipment_port, "timeout": "500ms"},
            "poll_interval": "50ms",
            "backoff": {"initial": "100ms", "max": "500ms"},
            "signals": [
                {"name": "zone1_top_temp", "table": "holding", "address": 0, "type": "float32", "unit": "Cel"},
                {"name": "conveyor_speed", "table": "holding", "address": 2, "type": "uint16", "scale": 0.1,
                 "unit": "cm/min"},
                {"name": "board_count", "table": "holding", "address": 4, "type": "uint32", "word_order": "little"},
            ],
        }],
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Daemon:
    config: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None

    log_offset: int = 0
    """Size of the (possibly shared) log when this process started: what it wrote comes after."""

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [EMSEDGE, "run", "-c", str(self.config)],
                stdout=log, stderr=log, env={**os.environ, **self.env}, cwd=self.cwd,
            )

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        self.process = None
        return code

    def wait_running(self, timeout: float = 60.0) -> None:
        """Until this process logged `running` (every machine started; signals are handled from here)."""
        def running() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()[-3000:]
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return b'"event": "running"' in log.read()
        wait_until(running, timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(predicate: Any, timeout: float = 60.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def buffer_seqs(path: Path) -> tuple[int, set[int]]:
    """(the last seq the gateway assigned, the seqs still waiting in its buffer) of a stopped gateway.

    Read with the gateway's own tool (`emsedge buffer stats --json`, `emsedge buffer export`), so a seq
    check can cover the tail: every seq up to the last one was delivered or is still buffered.
    """
    def run(*args: str) -> str:
        result = subprocess.run([EMSEDGE, "buffer", *args, "--path", str(path)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    stats = json.loads(run("stats", "--json"))
    waiting = {json.loads(line)["seq"] for line in run("export").splitlines() if line.strip()}
    return int(stats["next_seq"]) - 1, waiting
