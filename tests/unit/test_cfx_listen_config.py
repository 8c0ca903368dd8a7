"""`cfx.listen`: the address check, and what EndpointConnected announces with and without it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.daemon import EMSEDGE

from emsedge.config import CfxConfig
from emsedge.publish.cfx import announced_request_endpoint, listen_uri

BROKER = "amqp://mes-broker:5672"
HANDLE = "plant1.line1.aoi-1"


def cfx(**extra: Any) -> CfxConfig:
    return CfxConfig.model_validate({"broker": BROKER, **extra})


def test_listen_is_off_by_default_and_nothing_is_announced() -> None:
    config = cfx()
    assert config.listen is None and listen_uri(config) is None
    assert announced_request_endpoint(config, HANDLE) == (None, None)


@pytest.mark.parametrize("address", ["127.0.0.1:5673", "0.0.0.0:5673", ":5673", "[::1]:5673", "linepc:5673"])
def test_listen_takes_host_port(address: str) -> None:
    assert cfx(listen=address).listen == address


@pytest.mark.parametrize("address", ["5673", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "host:port",
                                     "amqp://127.0.0.1:5673", "user@host:5673"])
def test_listen_refuses_what_is_not_host_port(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        cfx(listen=address)


def test_the_direct_listener_is_announced_with_the_handle_as_its_address_even_beside_broker_requests() -> None:
    config = cfx(listen="127.0.0.1:5673", requests={"address": "/queue/{handle}"})
    assert announced_request_endpoint(config, HANDLE) == ("amqp://127.0.0.1:5673", HANDLE)
    assert announced_request_endpoint(cfx(requests={}), HANDLE) == (BROKER, f"/queue/{HANDLE}")
    assert listen_uri(cfx(listen="[::1]:5673")) == "amqp://[::1]:5673"


def test_a_wildcard_listener_is_announced_under_this_machines_name() -> None:
    assert listen_uri(cfx(listen="0.0.0.0:5673")) == f"amqp://{socket.getfqdn()}:5673"
    assert listen_uri(cfx(listen=":5673")) == f"amqp://{socket.getfqdn()}:5673"


def test_check_config_refuses_a_bad_listen_address_with_its_location(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("gateway: {id: gw, site: s, line: l}\ncfx:\n  broker: amqp://127.0.0.1:5672\n"
                    "  listen: 'amqp://0.0.0.0:5673'\n")
    result = subprocess.run([EMSEDGE, "check-config", str(path)], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"{path}:4:" in out and "host:port" in out, out
