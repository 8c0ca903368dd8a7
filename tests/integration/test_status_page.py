"""The status page in a real browser (Debian's chromium, headless, driven by selenium) against the virtual line.

The virtual line (`emsedge simulate`) and the gateway (`emsedge run`) run as processes on free ports with a
real mosquitto. The test watches the page update live (server-sent events, no reload) and checks what a
technician would look at: three machine cards with their states, a value following the simulator within
2 s, a board joined across placement, reflow and inspection, a scheduled jam shown as an alarm and cleared,
and the MQTT backlog rising during a broker outage and falling after it. Screenshots of the overview, a
machine and the boards land in `artifacts/status-page/` (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.client import ModbusTcpClient
from support import REPO, Mosquitto, free_port, wait_for_port
from support.daemon import EMSEDGE, Daemon, wait_until

from emsedge.simulate import load_virtual_line

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "artifacts" / "status-page"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"),
    reason="chromium and chromium-driver are not installed (make test installs them; in CI this fails)",
)


def line_config(tmp_path: Path) -> tuple[Path, Any]:
    """The demo line on free ports, quick cycles, and a jam long enough to be seen."""
    base = load_virtual_line(REPO / "config" / "virtual-line.yaml")
    ports = [free_port() for _ in range(3)]
    config = {
        "line": {"speed": 1, "tick": "50ms", "seed": 11, "first_serial": 701, "board_interval": "1500ms",
                 "max_boards": 40},
        "pick_and_place": {"port": ports[0], "setup_time": "2s", "transfer_time": "100ms",
                           "placement_time": "900ms", "pick_error_rate": 0.01},
        "reflow_oven": {"port": ports[1], "dwell_time": "2s", "min_spacing": "300ms"},
        "aoi": {"port": ports[2], "inspection_time": "300ms", "defect_rate": 0.4},
        "ict": {"enabled": False},  # the page test is about the three protocol machines
        "schedule": {"faults": [
            {"at": "12s", "machine": "pick_and_place", "fault": "jam", "duration": "3s"},
        ]},
    }
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, base.model_copy(update={
        "pick_and_place": base.pick_and_place.model_copy(update={"port": ports[0]}),
        "reflow_oven": base.reflow_oven.model_copy(update={"port": ports[1]}),
        "aoi": base.aoi.model_copy(update={"port": ports[2]}),
    })


def gateway_file(tmp_path: Path, line: Any, broker: str, http_port: int) -> Path:
    """config/demo.yaml pointed at the line's ports and at this test's broker, buffer and HTTP port."""
    data = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    connections = {
        line.pick_and_place.id: {"url": f"opc.tcp://127.0.0.1:{line.pick_and_place.port}/emsedge/pnp"},
        line.reflow_oven.id: {"host": "127.0.0.1", "port": line.reflow_oven.port},
        line.aoi.id: {"host": "127.0.0.1", "port": line.aoi.port},
    }
    data["equipment"] = [e for e in data["equipment"] if e["id"] in connections]  # not the tester's folder
    for entry in data["equipment"]:
        entry["connection"] = {**(entry.get("connection") or {}), **connections[entry["id"]]}
    data["mqtt"].update({"url": broker, "keepalive": "2s", "connect_timeout": "2s",
                         "backoff": {"initial": "100ms", "max": "500ms"}})
    data["buffer"] = {"path": str(tmp_path / "buffer.db"), "sync": "normal"}
    data["http"] = {"listen": f"127.0.0.1:{http_port}"}
    data["logging"] = {"format": "json"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Simulator:
    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.log_path = tmp_path / "simulate.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([EMSEDGE, "simulate", "-c", str(config)], stdout=log, stderr=log)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="emsedge-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def cards(driver: Any) -> dict[str, dict[str, Any]]:
    return page(driver, """
        const out = {};
        for (const c of document.querySelectorAll('.card[data-machine]')) {
          out[c.dataset.machine] = {
            state: c.querySelector('[data-state]')?.dataset.state,
            e58: c.querySelector('[data-e58]')?.dataset.e58,
            alarms: [...c.querySelectorAll('[data-alarm]')].map(a => a.textContent),
          };
        }
        return out;""")


def wait_page(driver: Any, predicate: Any, timeout: float = 30.0) -> None:
    wait_until(lambda: bool(predicate()), timeout, interval=0.05)


def board_exit_registers(client: ModbusTcpClient) -> tuple[int, ...]:
    answer = client.read_holding_registers(104, count=2)
    return tuple(answer.registers)


def test_status_page_follows_the_virtual_line_live(tmp_path: Path, mosquitto: Mosquitto, browser: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    line_file, line = line_config(tmp_path)
    http_port = free_port()
    sim = Simulator(line_file, tmp_path)
    gateway = Daemon(gateway_file(tmp_path, line, mosquitto.url, http_port), tmp_path / "gateway.log",
                     env={"EMSEDGE_PROFILES": str(REPO / "adapters")})
    try:
        for port in (line.pick_and_place.port, line.reflow_oven.port, line.aoi.port):
            wait_for_port(port, timeout=30)
        gateway.start()
        wait_for_port(http_port, timeout=30)
        browser.get(f"http://127.0.0.1:{http_port}/")

        # Three machine cards, each connected, with a SEMI E58 state once the machines report one.
        wait_page(browser, lambda: len(cards(browser)) == 3 and all(
            c["state"] == "connected" for c in cards(browser).values()))
        assert set(cards(browser)) == {"pnp-1", "reflow-1", "aoi-1"}
        wait_page(browser, lambda: cards(browser)["reflow-1"]["e58"] not in (None, "none"))
        assert page(browser, "return document.getElementById('live').textContent").startswith("●")
        browser.save_screenshot(str(ARTIFACTS / "overview.png"))

        # A value on the page follows the simulator within 2 s: board_exit_count of the oven.
        browser.get(f"http://127.0.0.1:{http_port}/#/machine/reflow-1")
        cell = "return document.querySelector('tr[data-signal=\"board_exit_count\"] .value')?.textContent"
        wait_page(browser, lambda: page(browser, cell) not in (None, "\u2013"))
        client = ModbusTcpClient("127.0.0.1", port=line.reflow_oven.port)
        assert client.connect()
        try:
            before_page = page(browser, cell)
            before = board_exit_registers(client)
            while board_exit_registers(client) == before:  # the simulator changes it (a board leaves)
                time.sleep(0.01)
            changed_at = time.monotonic()
        finally:
            client.close()
        wait_page(browser, lambda: page(browser, cell) != before_page, timeout=5)
        assert time.monotonic() - changed_at < 2.0
        wait_page(browser, lambda: page(browser, "return document.querySelectorAll('tr[data-signal] svg.spark')"
                                                 ".length") > 0, timeout=10)
        browser.save_screenshot(str(ARTIFACTS / "machine-reflow.png"))

        # The scheduled jam on the pick-and-place shows as an alarm on its card, then clears.
        browser.get(f"http://127.0.0.1:{http_port}/#/")
        wait_page(browser, lambda: cards(browser)["pnp-1"]["alarms"], timeout=30)
        browser.save_screenshot(str(ARTIFACTS / "overview-jam.png"))
        wait_page(browser, lambda: not cards(browser)["pnp-1"]["alarms"], timeout=15)

        # A board joined by serial: placement, reflow and inspection on one row.
        browser.get(f"http://127.0.0.1:{http_port}/#/boards")
        complete = """return [...document.querySelectorAll('tr[data-serial]')].filter(r =>
            !r.querySelector('.placement .muted') && !r.querySelector('.reflow .muted')
            && !r.querySelector('.inspection .muted')).map(r => r.dataset.serial)"""
        wait_page(browser, lambda: page(browser, complete), timeout=30)
        serial = page(browser, complete)[0]
        row = page(browser, f"return document.querySelector('tr[data-serial=\"{serial}\"]').innerText")
        assert "peak" in row and ("PASS" in row or "FAIL" in row)
        search = browser.find_element("id", "board-search")
        search.send_keys(serial)
        wait_page(browser, lambda: page(browser, "return [...document.querySelectorAll('tr[data-serial]')]"
                                                 ".map(r => r.dataset.serial)") == [serial])
        browser.save_screenshot(str(ARTIFACTS / "boards.png"))

        # Broker outage: the MQTT backlog rises on the delivery view, and falls once the broker is back.
        browser.get(f"http://127.0.0.1:{http_port}/#/delivery")
        backlog = "return Number(document.querySelector('tr[data-output=\"mqtt\"] .backlog')?.textContent)"
        wait_page(browser, lambda: page(browser, backlog) < 50)
        mosquitto.stop()
        wait_page(browser, lambda: page(browser, backlog) > 50, timeout=30)
        browser.save_screenshot(str(ARTIFACTS / "delivery-outage.png"))
        mosquitto.start()
        wait_page(browser, lambda: page(browser, backlog) < 20, timeout=60)
        browser.save_screenshot(str(ARTIFACTS / "delivery.png"))
    finally:
        if gateway.alive():
            gateway.stop()
        sim.stop()


def test_demo_prints_the_page_url_and_serves_the_page(tmp_path: Path) -> None:
    line_file, line = line_config(tmp_path)  # free ports: another line may run on this machine
    config = gateway_file(tmp_path, line, "mqtt://127.0.0.1:1", free_port())  # the demo sets broker and port
    page_port = free_port()  # given to the demo: its own pick (9108 when it looks free) races with other demos
    demo = subprocess.Popen(
        [EMSEDGE, "demo", "--no-tui", "--duration", "20", "--line", str(line_file), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO / "tests",
        env={**os.environ, "EMSEDGE_PROFILES": str(REPO / "adapters"),
             "EMSEDGE_HTTP__LISTEN": f"127.0.0.1:{page_port}"},
    )
    try:
        assert demo.stderr is not None
        url = ""
        for line in demo.stderr:
            if "in your browser:" in line:
                url = line.rsplit(" ", 1)[1].strip()
                break
        assert url == f"http://127.0.0.1:{page_port}/"
        port = page_port
        wait_for_port(port, timeout=30)
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.status == 200 and b"emsedge" in answer.read()
        with urllib.request.urlopen(url + "api/line", timeout=5) as answer:
            assert {m["id"] for m in json.loads(answer.read())["machines"]} == {"pnp-1", "reflow-1", "aoi-1"}
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)
