"""TLS to a real mosquitto TLS listener: good CA works; wrong CA, expired and wrong-host certificates fail
clearly and never fall back to plain TCP. Certificates are generated here with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from faults.fake_broker import FakeBroker, make_publisher, running, wait_until
from structlog.testing import capture_logs
from support import Mosquitto
from support.proxy import LinkProxy

from emsedge.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

NOW = dt.datetime.now(dt.UTC)

# OpenSSL's words for a chain that does not lead to the configured CA (depends on what the broker sends).
UNTRUSTED = re.compile(r"unable to get local issuer certificate|self-signed certificate in certificate chain")


@dataclass
class Issued:
    cert: Path
    key: Path


class Authority:
    """A throw-away certificate authority writing PEM files into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{name}-ca.pem"
        self.pem.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, label: str, *, dns: list[str], ips: list[str], expired: bool = False, client: bool = False
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        not_after = NOW - dt.timedelta(days=1) if expired else NOW + dt.timedelta(days=10)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else label)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{label}.pem", self.directory / f"{label}.key")
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return issued


@dataclass
class Pki:
    ca: Authority
    other_ca: Authority
    good: Issued
    expired: Issued
    wrong_host: Issued
    client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "plant")
    return Pki(
        ca=ca,
        other_ca=Authority(directory, "other"),
        good=ca.issue("broker", dns=["localhost"], ips=["127.0.0.1"]),
        expired=ca.issue("broker-expired", dns=["localhost"], ips=["127.0.0.1"], expired=True),
        wrong_host=ca.issue("broker-wrong-host", dns=["broker.elsewhere.example"], ips=["10.9.9.9"]),
        client=ca.issue("line1-gw", dns=[], ips=[], client=True),
    )


def tls_broker(tmp_path: Path, pki: Pki, server: Issued, *, require_client_cert: bool = False) -> Mosquitto:
    broker = Mosquitto(
        workdir=tmp_path,
        extra_config="\n".join([
            f"cafile {pki.ca.pem}",
            f"certfile {server.cert}",
            f"keyfile {server.key}",
            f"require_certificate {'true' if require_client_cert else 'false'}",
        ]),
    )
    broker.start()
    return broker


@pytest.fixture
def good_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    broker = tls_broker(tmp_path, pki, pki.good)
    yield broker
    broker.stop()


async def failing_connect(url: str, **mqtt: object) -> tuple[str, list[str]]:
    """Run a publisher that must not connect; return its last error and the connect-failure log lines.

    The publisher reaches the broker through a TCP relay that counts connections, so "a few retries" is
    an observed count of attempts, not a guess at how long they take.
    """
    parts = urlsplit(url)
    relay = LinkProxy(parts.port or 8883)
    relay.start()
    try:
        with capture_logs() as logs:
            pub = make_publisher(parts._replace(netloc=f"{parts.hostname}:{relay.port}").geturl(), **mqtt)
            async with running(pub, connected=False):
                await wait_until(lambda: relay.connections >= 4, 15)  # four attempts: still never connected
                assert not pub.connected
                assert pub.connection_epoch == 0
                error = (pub.last_error or "").replace(str(relay.port), str(parts.port))
    finally:
        relay.close()
    lines = [str(e["error"]) for e in logs if e["event"] == "mqtt connect failed"]
    return error, lines


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_broker_certificate_from_the_configured_ca_connects_and_publishes(
    good_broker: Mosquitto, pki: Pki, host: str
) -> None:
    url = f"mqtts://{host}:{good_broker.port}"
    async with running(make_publisher(url, tls={"ca_file": str(pki.ca.pem)})) as pub:
        assert pub.current_url == url
        assert (await pub.publish("ems/test/oven/telemetry", b"{}", qos=1)).ok


@pytest.mark.asyncio
async def test_a_broker_certificate_from_another_ca_is_refused_with_a_clear_error(
    good_broker: Mosquitto, pki: Pki
) -> None:
    url = f"mqtts://127.0.0.1:{good_broker.port}"
    error, lines = await failing_connect(url, tls={"ca_file": str(pki.other_ca.pem)})
    assert "TLS certificate verification failed" in error
    assert UNTRUSTED.search(error)
    assert len(lines) == 1


@pytest.mark.asyncio
async def test_an_expired_broker_certificate_is_refused_with_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    broker = tls_broker(tmp_path, pki, pki.expired)
    try:
        error, lines = await failing_connect(f"mqtts://127.0.0.1:{broker.port}", tls={"ca_file": str(pki.ca.pem)})
    finally:
        broker.stop()
    assert "certificate has expired" in error
    assert len(lines) == 1


@pytest.mark.asyncio
async def test_a_broker_certificate_for_another_host_is_refused_unless_hostname_checks_are_turned_off(
    tmp_path: Path, pki: Pki
) -> None:
    broker = tls_broker(tmp_path, pki, pki.wrong_host)
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        error, lines = await failing_connect(url, tls={"ca_file": str(pki.ca.pem)})
        assert "mismatch" in error
        assert "127.0.0.1" in error
        assert len(lines) == 1
        # The explicit opt-out still verifies the chain, only not the name.
        opt_out = {"ca_file": str(pki.ca.pem), "verify_hostname": False}
        async with running(make_publisher(url, tls=opt_out)) as pub:
            assert (await pub.publish("ems/test/oven/telemetry", b"{}", qos=1)).ok
        error, _ = await failing_connect(url, tls={"ca_file": str(pki.other_ca.pem), "verify_hostname": False})
        assert UNTRUSTED.search(error)
    finally:
        broker.stop()


@pytest.mark.asyncio
async def test_mutual_tls_uses_the_client_certificate_and_fails_without_it(tmp_path: Path, pki: Pki) -> None:
    broker = tls_broker(tmp_path, pki, pki.good, require_client_cert=True)
    try:
        url = f"mqtts://localhost:{broker.port}"
        tls = {"ca_file": str(pki.ca.pem), "cert_file": str(pki.client.cert), "key_file": str(pki.client.key)}
        async with running(make_publisher(url, tls=tls)) as pub:
            assert (await pub.publish("ems/test/oven/telemetry", b"{}", qos=1)).ok
        error, _ = await failing_connect(url, tls={"ca_file": str(pki.ca.pem)})
        assert error, "without a client certificate the broker ends the handshake"
    finally:
        broker.stop()


@pytest.mark.asyncio
async def test_a_tls_url_never_falls_back_to_plain_mqtt(pki: Pki) -> None:
    """A plain MQTT broker behind an mqtts:// URL: the handshake fails and no MQTT packet is ever sent."""
    async with FakeBroker() as plain:
        error, _ = await failing_connect(f"mqtts://127.0.0.1:{plain.port}", tls={"ca_file": str(pki.ca.pem)})
        assert error.startswith(f"mqtts://127.0.0.1:{plain.port}: ")
        assert "TLS" in error or "timed out" in error
        assert plain.connects == [], "no CONNECT (and so no credentials) ever went out in clear text"


def test_a_tls_setting_with_a_plain_url_or_a_mixed_broker_list_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="never falls back to plain TCP"):
        make_publisher("mqtt://127.0.0.1:1883", tls={"ca_file": str(pki.ca.pem)})
    with pytest.raises(ConfigError, match="mix of mqtts:// and mqtt://"):
        make_publisher(["mqtts://127.0.0.1:8883", "mqtt://127.0.0.1:1883"])


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    # A missing file is refused by the config itself (located error); one that exists but is not a
    # certificate is refused when the publisher loads it.
    with pytest.raises(ValueError, match="does not point to a file"):
        make_publisher("mqtts://127.0.0.1:8883", tls={"ca_file": str(tmp_path / "missing.pem")})
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"mqtt\.tls: cannot load"):
        make_publisher("mqtts://127.0.0.1:8883", tls={"ca_file": str(tmp_path / "garbage.pem")})


def test_emsedge_watch_connects_over_tls_with_the_plant_ca_and_refuses_another(
    good_broker: Mosquitto, pki: Pki
) -> None:
    url = f"mqtts://127.0.0.1:{good_broker.port}"

    def watch(ca: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "emsedge.cli", "watch", "--broker", url, "--prefix", "ems/p/smt/l",
             "--ca-file", str(ca), "--once", "--json", "--wait", "1"],
            capture_output=True, text=True, timeout=60, check=False,
        )

    trusted = watch(pki.ca.pem)
    assert "refused" not in trusted.stderr and "cannot reach" not in trusted.stderr, trusted.stderr
    assert json.loads(trusted.stdout)["broker"] == url  # connected and subscribed; the line is silent
    untrusted = watch(pki.other_ca.pem)
    assert untrusted.returncode == 1
    assert "cannot reach" in untrusted.stderr and "certificate verify failed" in untrusted.stderr


def test_emsedge_fleet_connects_over_tls_with_the_plant_ca_and_refuses_another(
    good_broker: Mosquitto, pki: Pki
) -> None:
    url = f"mqtts://127.0.0.1:{good_broker.port}"

    def fleet(ca: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "emsedge.cli", "fleet", "--broker", url, "--prefix", "ems/p",
             "--ca-file", str(ca), "--wait", "1s"],
            capture_output=True, text=True, timeout=60, check=False,
        )

    trusted = fleet(pki.ca.pem)  # connected and subscribed; no gateway has published a status here
    assert trusted.returncode == 1 and "no gateway status under ems/p" in trusted.stderr, trusted.stderr
    untrusted = fleet(pki.other_ca.pem)
    assert untrusted.returncode == 1
    assert "cannot reach" in untrusted.stderr and "certificate verify failed" in untrusted.stderr
