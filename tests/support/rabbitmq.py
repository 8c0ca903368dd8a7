"""A real RabbitMQ node (Debian's rabbitmq-server with the bundled rabbitmq_amqp1_0 plugin) for tests.

Unprivileged test node: its own node name, free loopback ports, and every directory under a temporary
folder owned by the `rabbitmq` user when run as root (the Debian script drops to that user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from support import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def available() -> bool:
    return Path(SERVER).exists() or shutil.which("rabbitmq-server") is not None


class RabbitMQ:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"t{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self.env = self._environment()

    @property
    def url(self) -> str:
        return f"amqp://127.0.0.1:{self.port}"

    def _environment(self) -> dict[str, str]:
        base = self.workdir
        for sub in ("mnesia", "log", "expand", "home"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[rabbitmq_amqp1_0].\n")
        (base / "rabbitmq.conf").write_text(
            f"loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{self.port}\namqp1_0.default_user = guest\n"
        )
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            for path in [base, *base.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(base / "feature_flags"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(base / "expand"),
            RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
            HOME=str(base / "home"),
        )
        return env

    def start(self, timeout: float = 90.0) -> None:
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [SERVER], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready(timeout)
        self.start_seconds = time.monotonic() - began

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}; logs in {self.workdir}/log")
            done = subprocess.run(
                [CTL, "-n", self.node, "await_startup", "--timeout", "5"], env=self.env,
                capture_output=True, timeout=30, check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f"rabbitmq-server did not start in {timeout} s; logs in {self.workdir}/log")

    def ctl(self, *args: str) -> str:
        done = subprocess.run([CTL, "-n", self.node, *args], env=self.env, capture_output=True, timeout=60,
                              check=True)
        return done.stdout.decode()

    def declare_durable_queue(self, name: str) -> str:
        """A durable queue (survives a broker restart, unlike the one `/queue/<name>` declares); returns the
        AMQP 1.0 address of the existing queue."""
        self.ctl("eval", f'rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"{name}">>), true, false, '
                 '[], none, <<"emsedge-test">>).')
        return f"/amq/queue/{name}"

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            subprocess.run([CTL, "-n", self.node, "shutdown"], env=self.env, capture_output=True, timeout=60,
                           check=False)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def read_queue(url: str, address: str) -> list[dict[str, Any]]:
    """Every CFX envelope waiting at `address`, accepted (read until the queue stays quiet for 2 s)."""
    import orjson  # noqa: PLC0415 - proton only for the CFX tests, not for every test that loads this module
    from proton import Timeout  # noqa: PLC0415
    from proton.utils import BlockingConnection  # noqa: PLC0415

    connection = BlockingConnection(url, user="guest", password="guest", allowed_mechs="PLAIN")
    receiver = connection.create_receiver(address, credit=1000)
    envelopes = []
    try:
        while True:
            try:
                message = receiver.receive(timeout=2)
            except Timeout:
                break
            envelopes.append(orjson.loads(bytes(message.body)))
            receiver.accept()
    finally:
        connection.close()
    return envelopes
