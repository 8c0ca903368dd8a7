"""`emsedge probe modbus://...` against a real pymodbus server."""

from __future__ import annotations

import anyio
import pytest
from modbus_server import ModbusTestServer, RegisterImage, free_port

from emsedge.adapters.modbus.adapter import main_probe


@pytest.mark.asyncio
async def test_probe_prints_decoded_values_in_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    image = RegisterImage()
    for n, value in enumerate((21.5, -3.25, 1000.0)):
        image.put(n * 2, "float32", value, word_order="little")
    async with ModbusTestServer(holding=image.registers(10)) as server:
        argv = [f"modbus://127.0.0.1:{server.port}", "--table", "holding", "--address", "0", "--count", "3",
                "--type", "float32", "--word-order", "little"]
        status = await anyio.to_thread.run_sync(main_probe, argv)
    out = capsys.readouterr().out
    assert status == 0
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["0", "float32", "21.5"]
    assert lines[2].split()[:3] == ["2", "float32", "-3.25"]
    assert lines[3].split()[:3] == ["4", "float32", "1000"]
    assert "3 values" in lines[-1]
    assert "1 request" in lines[-1]


@pytest.mark.asyncio
async def test_probe_fails_with_a_clear_message_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    status = await anyio.to_thread.run_sync(main_probe, [f"modbus://127.0.0.1:{free_port()}", "--timeout", "0.5"])
    assert status == 1
    assert "cannot connect to 127.0.0.1" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_probe_exits_non_zero_on_an_exception_response(capsys: pytest.CaptureFixture[str]) -> None:
    async with ModbusTestServer(holding=[0] * 4) as server:
        status = await anyio.to_thread.run_sync(
            main_probe, [f"127.0.0.1:{server.port}", "--address", "100", "--count", "2"]
        )
    assert status == 1
    assert "IllegalDataAddress" in capsys.readouterr().out


def test_probe_rejects_a_url_that_is_not_modbus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_probe(["opc.tcp://host:4840"]) == 2
    assert "not modbus://host:port" in capsys.readouterr().err
