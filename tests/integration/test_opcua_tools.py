"""`emsedge browse` against the pick-and-place server and `emsedge opcua-cert` output."""

from __future__ import annotations

import stat
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from opcua_server import PnPServer
from support import free_port

from emsedge.adapters.opcua.tools import main_browse, main_gen_cert


@pytest.mark.asyncio
async def test_browse_prints_the_tree_with_node_ids_browse_paths_types_and_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = PnPServer()
    await srv.start()
    try:
        code = await anyio.to_thread.run_sync(main_browse, [srv.url, "--security", "None", "--depth", "5"])
    finally:
        await srv.stop()
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Objects  i=85  0:Objects")
    vacuum = next(line for line in lines if "Vacuum" in line)
    assert vacuum == (
        "        Vacuum  ns=2;s=PnP.Heads.Head1.Vacuum  0:Objects/2:PnP/2:Heads/2:Head1/2:Vacuum  Double = -60.0"
    )
    assert "  PnP  ns=2;s=PnP  0:Objects/2:PnP" in lines
    assert any(line.strip().startswith("NozzleIds") and line.endswith("Int32 = [11, 12, 13]") for line in lines)
    assert any(line.strip().startswith("StateText") and line.endswith('LocalizedText = "Running"') for line in lines)
    assert not any("ns=0;i=2253" in line or line.strip().startswith("Server  i=2253") for line in lines)


@pytest.mark.asyncio
async def test_browse_of_a_dead_endpoint_fails_with_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    code = await anyio.to_thread.run_sync(main_browse, [url, "--security", "None", "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"error: {url}:")


def test_opcua_cert_writes_a_self_signed_certificate_with_the_application_uri(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main_gen_cert(["--uri", "urn:line7:emsedge", "--out", str(tmp_path), "--host", "gw7.local",
                          "--host", "10.0.0.7"]) == 0
    cert = x509.load_der_x509_certificate((tmp_path / "client-cert.der").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:line7:emsedge"]
    assert san.get_values_for_type(x509.DNSName) == ["gw7.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert usage.data_encipherment
    assert cert.issuer == cert.subject
    key_path = tmp_path / "client-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert "application_uri: urn:line7:emsedge" in capsys.readouterr().out


def test_opcua_cert_refuses_something_that_is_not_a_uri(tmp_path: Path) -> None:
    assert main_gen_cert(["--uri", "line7 gateway", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())
