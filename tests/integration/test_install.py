"""An install that works off the checkout: the wheel built from this tree, installed into a fresh venv
outside the checkout, runs `check-config` on a profile-based config, `simulate` and `demo --no-tui` with the
profiles and configs inside the package.

To stay fast and offline, the fresh venv takes emsedge's dependencies from the test venv's site-packages
through a .pth line (a path, not a site dir: the editable install's hooks there are not run); emsedge itself
comes only from the wheel (`pip install --no-deps`), and every command runs from a folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, free_port

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding the wheel of this checkout."""
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("emsedge-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-compile", str(wheel)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 120,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMSEDGE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra_env or {})
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "emsedge"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, check=False)


def test_the_installed_emsedge_is_the_wheel_and_carries_profiles_and_configs(installed: Path, tmp_path: Path) -> None:
    code = ("import emsedge, json; from emsedge.packaged import find_file, shipped_dir; "
            "print(json.dumps([emsedge.__file__, str(shipped_dir('adapters')), str(find_file('config/demo.yaml'))]))")
    result = subprocess.run([str(installed / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            check=True)
    module, profiles, demo = json.loads(result.stdout)
    venv = str(installed.parent)
    assert module.startswith(venv) and profiles.startswith(venv) and demo.startswith(venv)
    assert not module.startswith(str(REPO))
    assert (Path(profiles) / "reflow" / "virtual-reflow.yaml").is_file()


def test_check_config_resolves_a_profile_from_the_package(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "line.yaml"
    config.write_text("gateway: {id: gw, site: plant, line: l1}\n"
                      "equipment:\n  - {id: reflow-1, profile: reflow/virtual-reflow, connection: {host: 10.0.4.11}}\n")
    result = run(installed, "check-config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "10.0.4.11:15502" in result.stdout and "poll 250ms" in result.stdout and "56 signals" in result.stdout
    config.write_text("gateway: {id: gw, site: plant, line: l1}\nequipment:\n  - {id: r, profile: reflow/nope}\n")
    missing = run(installed, "check-config", str(config), cwd=tmp_path)
    assert missing.returncode == 78
    assert "searched:" in missing.stderr and str(installed.parent) in missing.stderr


def line_and_gateway(tmp_path: Path, installed: Path) -> tuple[Path, Path]:
    """The shipped virtual line and demo configs, read from the installed package, on free ports."""
    data = Path(subprocess.run([str(installed / "python"), "-c",
                                "from emsedge.packaged import shipped_dir; print(shipped_dir('config'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ports = {"pick_and_place": free_port(), "reflow_oven": free_port(), "aoi": free_port()}
    line: dict[str, Any] = yaml.safe_load((data / "virtual-line.yaml").read_text())
    for machine, port in ports.items():
        line[machine]["port"] = port
    demo: dict[str, Any] = yaml.safe_load((data / "demo.yaml").read_text())
    connection = {"pnp-1": {"url": f"opc.tcp://127.0.0.1:{ports['pick_and_place']}/emsedge/pnp"},
                  "reflow-1": {"port": ports["reflow_oven"]}, "aoi-1": {"port": ports["aoi"]}}
    for entry in demo["equipment"]:
        if entry["id"] in connection:  # ict-1 reads a folder (./var/ict-1/out in the working directory)
            entry["connection"] = connection[entry["id"]]
    (tmp_path / "line.yaml").write_text(yaml.safe_dump(line))
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo))
    return tmp_path / "line.yaml", tmp_path / "demo.yaml"


def test_simulate_and_demo_run_from_the_installed_package(installed: Path, tmp_path: Path) -> None:
    line, gateway = line_and_gateway(tmp_path, installed)
    simulated = run(installed, "simulate", "-c", str(line), "--duration", "2", cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr
    demo = run(installed, "demo", "--no-tui", "--duration", "8", "--line", str(line), "--config", str(gateway),
               cwd=tmp_path, extra_env={"EMSEDGE_HTTP__LISTEN": f"127.0.0.1:{free_port()}"})  # not 9108
    assert demo.returncode == 0, demo.stderr
    messages = [json.loads(line) for line in demo.stdout.splitlines() if line.strip()]
    telemetry = {m["payload"]["equipment"] for m in messages if m["topic"].endswith("/telemetry")}
    assert telemetry == {"pnp-1", "reflow-1", "aoi-1"}
