"""`emsedge demo --no-tui`: line, broker, gateway and MES view come up, print what MES receives, stop cleanly."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from typing import Any

import orjson
from support import REPO, contract_violation, free_port
from support.daemon import EMSEDGE


def run_demo(*extra: str) -> tuple[int, list[dict[str, Any]], str]:
    # Run from another folder than the repo root: the demo finds its configs in the checkout anyway.
    # `--port-base 0`: the line on free ports, so a demo (or `emsedge simulate`) running beside the
    # suite cannot make it fail.
    # The status page on a free port too (the demo's own choice, 9108 when it looks free, races with
    # another demo starting at the same moment).
    result = subprocess.run([EMSEDGE, "demo", "--no-tui", "--duration", "8", "--port-base", "0", *extra], check=False,
                            capture_output=True, text=True, timeout=90, cwd=REPO / "tests",
                            env={**os.environ, "EMSEDGE_HTTP__LISTEN": f"127.0.0.1:{free_port()}"})
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, lines, result.stderr


def check_messages(lines: list[dict[str, Any]]) -> None:
    assert all(set(line) == {"topic", "payload"} for line in lines)
    prefix = "ems/demo-plant/smt/virtual-line"
    assert all(line["topic"].startswith(prefix + "/") for line in lines)
    status = [line["payload"] for line in lines if line["topic"] == f"{prefix}/_gateway/status"]
    assert status[0]["state"] == "online"
    assert status[-1]["state"] == "offline"  # the gateway stopped cleanly before the demo ended
    telemetry = {line["payload"]["equipment"] for line in lines if line["topic"].endswith("/telemetry")}
    assert telemetry == {"pnp-1", "reflow-1", "aoi-1"}
    violations = [v for line in lines
                  if (v := contract_violation(line["topic"], orjson.dumps(line["payload"]))) is not None]
    assert not violations, violations[:3]  # every message MES received is in the contract's normal form
    seqs = [line["payload"]["seq"] for line in lines if "seq" in line["payload"]]
    assert len(set(seqs)) == len(seqs)
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # a fresh buffer: from 1, no gap


def test_demo_no_tui_prints_every_message_mes_receives_as_json_lines() -> None:
    code, lines, stderr = run_demo()
    assert code == 0, stderr
    check_messages(lines)
    # Data keeps flowing, not one poll and done (a count of lines in 8 s would measure the machine's load).
    per_machine = Counter(line["payload"]["equipment"] for line in lines if line["topic"].endswith("/telemetry"))
    # (the AOI's status variables report by exception: once is normal for it)
    assert per_machine["reflow-1"] >= 2 and per_machine["pnp-1"] >= 2, per_machine


def test_demo_runs_on_the_embedded_amqtt_broker_when_mosquitto_is_missing() -> None:
    code, lines, stderr = run_demo("--broker", "embedded")
    assert code == 0, stderr
    check_messages(lines)
