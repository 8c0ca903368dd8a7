"""Server certificate checks (pin, trust dir with exact certs or a CA), chains, error classification."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from emsedge.adapters.opcua.config import OpcUaConnection
from emsedge.adapters.opcua.connect import _first_certificate, check_server_certificate, classify
from emsedge.adapters.opcua.tools import generate_certificate
from emsedge.errors import AdapterError


def der(path: Path) -> bytes:
    return path.read_bytes()


def conn(**kw: object) -> OpcUaConnection:
    return OpcUaConnection.model_validate({"url": "opc.tcp://h:4840", **kw})


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("certs")
    a, _ = generate_certificate("urn:a", root, name="a", key_size=1024)
    b, _ = generate_certificate("urn:b", root, name="b", key_size=1024)
    return {"a": a, "b": b, "root": root}


def ca_and_leaf(folder: Path) -> tuple[Path, bytes]:
    """A CA certificate file and a server certificate (DER) it issued."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plant CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pnp")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    folder.mkdir()
    path = folder / "ca.pem"
    path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return path, leaf.public_bytes(serialization.Encoding.DER)


def test_a_pinned_certificate_must_match_exactly(certs: dict[str, Path]) -> None:
    check_server_certificate(conn(server_certificate=str(certs["a"])), der(certs["a"]))
    with pytest.raises(AdapterError, match="does not match the pinned") as err:
        check_server_certificate(conn(server_certificate=str(certs["a"])), der(certs["b"]))
    assert not err.value.transient


def test_trust_dir_accepts_listed_certificates_and_ones_its_ca_issued(certs: dict[str, Path], tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "a.der").write_bytes(der(certs["a"]))
    check_server_certificate(conn(trust_dir=str(trust)), der(certs["a"]))
    with pytest.raises(AdapterError, match="not in trust_dir"):
        check_server_certificate(conn(trust_dir=str(trust)), der(certs["b"]))
    ca_dir = tmp_path / "ca"
    _, leaf = ca_and_leaf(ca_dir)
    check_server_certificate(conn(trust_dir=str(ca_dir)), leaf)
    with pytest.raises(AdapterError):
        check_server_certificate(conn(trust_dir=str(ca_dir)), der(certs["a"]))


def test_a_secured_endpoint_without_a_certificate_is_refused() -> None:
    with pytest.raises(AdapterError, match="no certificate"):
        check_server_certificate(conn(), b"")


def test_the_leaf_is_taken_from_a_certificate_chain(certs: dict[str, Path]) -> None:
    assert _first_certificate(der(certs["a"]) + der(certs["b"])) == der(certs["a"])
    assert _first_certificate(der(certs["a"])) == der(certs["a"])


def test_errors_are_classified_transient_or_permanent() -> None:
    assert classify(ConnectionRefusedError(111, "refused")).transient
    assert classify(TimeoutError()).transient
    assert classify(UaStatusCodeError(ua.StatusCodes.BadSessionIdInvalid)).transient
    untrusted = classify(UaStatusCodeError(ua.StatusCodes.BadCertificateUntrusted))
    assert not untrusted.transient
    assert "BadCertificateUntrusted" in str(untrusted)
