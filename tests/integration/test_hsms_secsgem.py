"""The HSMS host adapter against secsgem 0.3.0, an independent SECS/GEM implementation, as the AOI.

secsgem runs in its own process (it is threaded) on a free port in passive mode; the test drives it
through stdin commands (see secsgem_equipment.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hsms_support import Collector, aoi_config, context
from support import Mosquitto, Subscriber, free_port
from support.daemon import Daemon, gateway_config

from emsedge.adapters.hsms.config import HsmsEquipment
from emsedge.adapters.hsms.gem import HsmsAdapter
from emsedge.schema import EventMessage, Record
from emsedge.supervisor import supervise_adapter

HERE = Path(__file__).parent
SV_PROCESS_STATE, SV_INSPECTED = 2101, 2102


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until a socket listens on `port`, read from /proc: secsgem accepts one connection only,
    so probing it with a connect would use up its listener."""
    deadline = time.monotonic() + timeout
    needle = f":{port:04X} "
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for row in f.readlines()[1:]:
                    fields = row.split()
                    if (fields[1] + " ").endswith(needle) and fields[3] == "0A":  # 0A: LISTEN
                        return
        time.sleep(0.02)
    raise TimeoutError(f"secsgem does not listen on {port}")


class SecsgemAoi:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.stderr = open(workdir / "secsgem.log", "wb")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "secsgem_equipment.py"), str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "listening", f"secsgem equipment did not start: {line!r}"
        wait_listening(self.port)

    def command_sync(self, text: str) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer == "ok", f"secsgem equipment answered {answer!r} to {text!r}"

    async def command(self, text: str) -> None:
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(self.command_sync, text)

    def close(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.terminate()  # secsgem's disable() can wait seconds for its threads
            self.process.wait(timeout=5)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.process.kill()
            self.process.wait()
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.stderr.close()


@pytest.fixture
def secsgem_aoi(tmp_path: Path) -> Iterator[SecsgemAoi]:
    aoi = SecsgemAoi(tmp_path)
    yield aoi
    aoi.close()


def secsgem_config(port: int) -> HsmsEquipment:
    base = aoi_config(port, t3="3s", t6="2s").model_dump()
    base["status_variables"][0]["svid"] = SV_PROCESS_STATE
    base["status_variables"][1]["svid"] = SV_INSPECTED
    return HsmsEquipment.model_validate(base)


@asynccontextmanager
async def adapter_against(aoi: SecsgemAoi, collector: Collector) -> AsyncIterator[None]:
    config = secsgem_config(aoi.port)
    ctx = context(config, collector)
    async with anyio.create_task_group() as tg:
        await tg.start(supervise_adapter, HsmsAdapter(ctx), ctx)
        # under load secsgem's select race can cost a whole reconnect (~10 s of retries, then backoff)
        await collector.wait_for(lambda c: bool(c.events("connection_restored")), within=60)
        yield
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_host_establishes_with_secsgem_and_polls_its_status_variables(secsgem_aoi: SecsgemAoi) -> None:
    collector = Collector()
    async with adapter_against(secsgem_aoi, collector):
        def polled(c: Collector) -> list[Record]:
            return [t for t in c.telemetry() if t.body["readings"][0]["quality"] == "good"]

        await collector.wait_for(lambda c: bool(polled(c)), within=15)
        readings = {r["signal"]: r for r in polled(collector)[0].body["readings"]}
        assert readings["process_state"]["value"] == 2
        assert readings["inspected_boards"]["value"] == 0
        assert readings["inspected_boards"]["unit"] == "boards"
        assert collector.events("connection_lost") == []


@pytest.mark.asyncio
async def test_secsgem_event_report_becomes_unit_inspected(secsgem_aoi: SecsgemAoi) -> None:
    collector = Collector()
    async with adapter_against(secsgem_aoi, collector):
        await secsgem_aoi.command("board PCB-77 FAIL 2")
        await secsgem_aoi.command("event")
        await collector.wait_for(lambda c: bool(c.events("unit_inspected")), within=15)
        (inspected,) = collector.events("unit_inspected")
        assert inspected["serial"] == "PCB-77"
        assert inspected["result"] == "fail"
        assert inspected["raw_result"] == "FAIL"
        assert inspected["defect_count"] == 2
        assert inspected["ceid"] == 3001


@pytest.mark.asyncio
async def test_secsgem_alarm_set_and_clear_become_linked_fault_events(secsgem_aoi: SecsgemAoi) -> None:
    collector = Collector()
    async with adapter_against(secsgem_aoi, collector):
        await secsgem_aoi.command("alarm_set 7001")
        await secsgem_aoi.command("alarm_clear 7001")
        await collector.wait_for(lambda c: bool(c.events("fault_cleared")), within=15)
        (occurred,) = collector.events("fault_occurred")
        (cleared,) = collector.events("fault_cleared")
        assert occurred["alid"] == 7001
        assert occurred["altx"] == "conveyor jam"
        assert occurred["alcd"] & 0x80
        assert not cleared["alcd"] & 0x80
        assert cleared["fault_occurrence_id"] == occurred["fault_occurrence_id"]


def test_secsgem_board_result_arrives_at_mqtt_as_unit_inspected_through_the_daemon(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Subscriber, secsgem_aoi: SecsgemAoi
) -> None:
    equipment = secsgem_config(secsgem_aoi.port).model_dump(mode="json", exclude_defaults=True)
    equipment.update(adapter="hsms", id="aoi-1", type="aoi")
    config = gateway_config(tmp_path, mosquitto.url, 0, equipment=[equipment])
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        subscriber.wait_for(
            lambda ps: any(p["event"]["type"] == "connection_restored" for p in ps), suffix="/aoi-1/events")
        secsgem_aoi.command_sync("board PCB-9001 PASS 0")
        secsgem_aoi.command_sync("event")
        got = subscriber.wait_for(
            lambda ps: any(p["event"]["type"] == "unit_inspected" for p in ps), suffix="/aoi-1/events")
        states = subscriber.wait_for(
            lambda ps: any(p["event"]["type"] == "station_state_changed" for p in ps), suffix="/aoi-1/events")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    inspected = next(EventMessage.model_validate(p) for p in got if p["event"]["type"] == "unit_inspected")
    assert inspected.equipment == "aoi-1"
    assert inspected.equipment_type == "aoi"
    body = inspected.event.model_dump()
    assert body["serial"] == "PCB-9001"
    assert body["result"] == "pass"
    assert body["defect_count"] == 0
    assert body["values"] == {"board_serial": "PCB-9001", "result": "PASS", "defect_count": 0}
    state = next(p["event"] for p in states if p["event"]["type"] == "station_state_changed")
    assert (state["signal"], state["raw_value"], state["state"], state["state_name"]) == (
        "process_state", 2, 1100, "productive")
