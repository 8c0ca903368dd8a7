"""A real 3-node NATS cluster with JetStream and its MQTT listener (Debian's `nats-server`, 2.9.x) for tests.

Every node listens on free loopback ports only (client, cluster route, monitoring, MQTT), keeps its
JetStream store in its own folder under `workdir`, and routes to the two others. MQTT's JetStream streams
(sessions, retained messages, QoS 1 messages) are replicated to all three nodes (`mqtt { stream_replicas: 3 }`),
so a node can stop without the cluster losing an acknowledged message.

Readiness is observable state, never a sleep: a node is ready when its monitoring endpoint's `/healthz`
answers 200 (JetStream enabled, a meta leader known, its streams current) and its MQTT listener answers a
CONNECT with CONNACK 0.

Run it by hand (`python tests/support/nats_cluster.py` or `make nats-cluster`) to get a cluster and its
MQTT URLs printed until Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if __package__ in (None, ""):  # run as a script: make `support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import free_port, wait_for_port

NODES = 3


def nats_binary() -> str | None:
    """The nats-server executable, or None when it is not installed (`make nats-server` installs it)."""
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


def available() -> bool:
    return nats_binary() is not None


@dataclass
class NatsNode:
    """One node: its name, ports and store; `process` is None while it is stopped."""

    index: int
    workdir: Path
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"n{self.index + 1}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of a monitoring endpoint such as `/jsz` or `/healthz`."""
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"null")
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsCluster:
    """Three `nats-server` processes forming one JetStream cluster with MQTT on every node.

    `start()` returns when every node is healthy and accepts MQTT; `stop_node(i)` and `start_node(i)`
    take one node down and bring it back (same ports, same store), `wait_ready()` waits for the cluster
    to agree again. `stop()` ends every node.
    """

    def __init__(self, workdir: Path, *, nodes: int = NODES, cluster_name: str = "emsedge-test") -> None:
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed: run `make test`, which installs it")
        self.binary = binary
        self.workdir = workdir
        self.cluster_name = cluster_name
        self.nodes = [NatsNode(index=i, workdir=workdir) for i in range(nodes)]

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [node.mqtt_port for node in self.nodes]

    def _config(self, node: NatsNode) -> Path:
        routes = ", ".join(f'"nats-route://127.0.0.1:{other.route_port}"' for other in self.nodes if other is not node)
        store = self.workdir / node.name / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        text = f"""
server_name: "{node.name}"
listen: "127.0.0.1:{node.client_port}"
http: "127.0.0.1:{node.monitor_port}"
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: "{self.cluster_name}"
  listen: "127.0.0.1:{node.route_port}"
  routes: [{routes}]
}}
mqtt {{
  listen: "127.0.0.1:{node.mqtt_port}"
  stream_replicas: {len(self.nodes)}
}}
"""
        path = self.workdir / f"{node.name}.conf"
        path.write_text(text)
        return path

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout)

    def _spawn(self, node: NatsNode) -> None:
        if node.running():
            return
        config = self._config(node)
        with open(node.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            node.process = subprocess.Popen([self.binary, "-c", str(config)], stdout=log, stderr=log)
        wait_for_port(node.monitor_port, timeout=20)

    def stop_node(self, index: int, *, kill: bool = False) -> None:
        """Stop one node (SIGTERM, or SIGKILL with `kill`) and wait for its process to end."""
        node = self.nodes[index]
        if node.process is None:
            return
        node.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            node.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
        node.process = None

    def start_node(self, index: int, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Start a stopped node again on the same ports and store; with `wait`, until the cluster is ready."""
        self._spawn(self.nodes[index])
        if wait:
            self.wait_ready(timeout)

    def stop(self) -> None:
        for index in range(len(self.nodes)):
            self.stop_node(index)

    # --- observable state ----------------------------------------------------------------------------

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name as a running node sees it, or None."""
        for node in self.nodes:
            if not node.running():
                continue
            try:
                status, body = node.monitor("/jsz")
            except OSError:
                continue
            if status == 200 and isinstance(body, dict):
                leader = (body.get("meta_cluster") or {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def node_ready(self, node: NatsNode) -> bool:
        """Healthy (JetStream on, meta leader known, streams current) and answering MQTT CONNECT."""
        if not node.running():
            return False
        try:
            status, _ = node.monitor("/healthz")
        except OSError:
            return False
        return status == 200 and mqtt_accepts(node.mqtt_port)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until a meta leader exists and every running node is healthy and accepts MQTT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.running()]
            if not running:
                raise RuntimeError("no nats-server node is running")
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited: {node.log()[-2000:]}")
            if self.meta_leader() is not None and all(self.node_ready(n) for n in running):
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {n.name}\n{n.log()[-1500:]}" for n in self.nodes)
        raise TimeoutError(f"the NATS cluster was not ready within {timeout}s\n{logs}")

    def mqtt_clients(self) -> dict[str, int]:
        """Connected MQTT clients per running node name (from `/connz`: MQTT clients carry `mqtt_client`)."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            if not node.running():
                continue
            try:
                status, body = node.monitor("/connz?limit=1024")
            except OSError:
                continue
            if status == 200 and isinstance(body, dict):
                counts[node.name] = sum(1 for c in body.get("connections") or [] if c.get("mqtt_client"))
        return counts

    def mqtt_client_ids(self, index: int) -> set[str]:
        """MQTT client ids connected to node `index` (empty when it is stopped)."""
        node = self.nodes[index]
        if not node.running():
            return set()
        status, body = node.monitor("/connz?limit=1024")
        if status != 200 or not isinstance(body, dict):
            return set()
        return {str(c["mqtt_client"]) for c in body.get("connections") or [] if c.get("mqtt_client")}


def mqtt_accepts(port: int, timeout: float = 3.0) -> bool:
    """True when an MQTT 3.1.1 CONNECT to 127.0.0.1:`port` gets CONNACK 0 (clean session, no state left)."""
    done = threading.Event()
    result: list[bool] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        result.append(not reason.is_failure)
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{port}-{time.monotonic_ns()}",
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port, keepalive=5)
    except OSError:
        return False
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return bool(result and result[0])


def main() -> int:
    """Start a cluster under a temporary folder and print its MQTT URLs until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="nats-cluster-") as tmp:
        cluster = NatsCluster(Path(tmp))
        try:
            cluster.start()
            print(f"NATS cluster ready (meta leader {cluster.meta_leader()}); MQTT 3.1.1 on:")
            for node in cluster.nodes:
                print(f"  {node.name}: {node.mqtt_url}  (monitoring http://127.0.0.1:{node.monitor_port})")
            print("Ctrl-C stops it")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
