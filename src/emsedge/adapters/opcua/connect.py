"""Connecting to an OPC UA server the way the config says, and nothing weaker.

Security rules (issue 3 item 5), enforced here for both adapter modes and `emsedge browse`:
* the endpoint is chosen by the configured policy *and* mode from the server's GetEndpoints answer; if
  the server does not offer that pair, the connection fails with a permanent error listing what it does
  offer. There is no fallback to another policy or mode, ever;
* policy `None` is used only when the config says so explicitly; the caller logs that once as a warning;
* the server certificate from the endpoint must equal the pinned `server_certificate`, or be in (or be
  issued by a CA in) `trust_dir`; otherwise the connection fails with a permanent error. With neither
  configured the certificate is accepted and the caller warns once (trust on every use);
* the password comes from `config.read_secret` and is never logged or put into an error message.

`ConnectFailure.transient` separates retryable failures (refused, timeouts, dropped sockets) from
configuration problems (untrusted certificate, missing policy, unreadable key) that need a human.
A failure of the TCP connect itself (refused, no route, timed out before the socket opened) is raised as
`AdapterError(unreachable=True)`, so the supervisor's port probe may end a grown backoff; a server that
accepts the socket and then fails Hello, the channel or the session is not `unreachable`.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

import anyio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError, UaStringParsingError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from emsedge.adapters.opcua.config import OpcUaConnection, OpcUaSignal
from emsedge.config import read_secret
from emsedge.errors import AdapterError

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_POLICY_NAMES = {cls.URI: name for name, cls in _POLICIES.items()} | {
    security_policies.SecurityPolicyNone.URI: "None",
    "http://opcfoundation.org/UA/SecurityPolicy#Basic128Rsa15": "Basic128Rsa15",
    "http://opcfoundation.org/UA/SecurityPolicy#Basic256": "Basic256",
}
DEFAULT_APPLICATION_URI = "urn:emsedge:client"


def load_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def application_uri_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _trusted_by_dir(cert: x509.Certificate, trust_dir: Path) -> bool:
    """True when the exact certificate is in the folder, or a CA certificate there signed it."""
    der = cert_der(cert)
    for file in sorted(trust_dir.iterdir()):
        if not file.is_file() or file.suffix.lower() not in {".der", ".pem", ".crt", ".cer"}:
            continue
        try:
            trusted = load_cert(file)
        except ValueError:
            continue
        if cert_der(trusted) == der:
            return True
        if trusted.subject == cert.issuer and trusted.subject != cert.subject:
            try:
                cert.verify_directly_issued_by(trusted)
            except (ValueError, TypeError, Exception):
                continue
            return True
    return False


def check_server_certificate(conn: OpcUaConnection, der: bytes) -> None:
    """Raise a permanent AdapterError unless the server certificate is pinned or trusted."""
    if not der:
        raise AdapterError("the server sent no certificate for a secured endpoint", transient=False)
    cert = x509.load_der_x509_certificate(der)
    if conn.server_certificate is not None:
        pinned = cert_der(load_cert(conn.server_certificate))
        if pinned != der:
            raise AdapterError(
                f"untrusted server certificate (sha256 {fingerprint(der)}): it does not match the pinned "
                f"server_certificate {conn.server_certificate} (sha256 {fingerprint(pinned)})",
                transient=False,
            )
        return
    if conn.trust_dir is not None and not _trusted_by_dir(cert, conn.trust_dir):
        raise AdapterError(
            f"untrusted server certificate {cert.subject.rfc4514_string()} (sha256 {fingerprint(der)}): "
            f"not in trust_dir {conn.trust_dir}; copy it there after checking it",
            transient=False,
        )


@dataclass(frozen=True)
class SecuritySetup:
    """What `connect` decided, for the caller's one-time log lines."""

    policy: str
    mode: str
    server_certificate_checked: bool


def _permanent(message: str) -> AdapterError:
    return AdapterError(message, transient=False)


async def connect(conn: OpcUaConnection, *, watchdog: float | None = None) -> tuple[Client, SecuritySetup]:
    """A connected asyncua Client (session activated), honouring the configured security exactly.

    Every network step runs under `conn.timeout` (asyncua's per-request timeout) and the whole sequence
    under an overall deadline, so a dead server can never hang the caller.
    """
    timeout = float(conn.timeout)
    client = Client(conn.url, timeout=timeout, watchdog_intervall=watchdog or max(1.0, timeout))
    client.session_timeout = max(30_000, int(timeout * 6_000))
    policy, mode = conn.security.policy, conn.security.mode
    checked = False
    socket_opened = False
    open_socket = client.connect_socket  # used by both connect() and connect_and_get_server_endpoints()

    async def connect_socket() -> None:
        nonlocal socket_opened
        await open_socket()
        socket_opened = True

    client.connect_socket = connect_socket  # type: ignore[method-assign]
    try:
        with anyio.fail_after(timeout * 4):
            if policy != "None":
                if conn.certificate is None or conn.private_key is None:
                    raise _permanent(
                        f"security {policy}/{mode} needs `certificate` and `private_key` "
                        "(create them with `emsedge opcua-cert --uri urn:... --out DIR`)"
                    )
                try:
                    own = load_cert(conn.certificate)
                    key_data = conn.private_key.read_bytes()
                    if b"-----BEGIN" in key_data:
                        serialization.load_pem_private_key(key_data, None)
                    else:
                        serialization.load_der_private_key(key_data, None)
                except (OSError, ValueError, TypeError) as exc:
                    raise _permanent(f"cannot load client certificate or private key: {exc}") from None
                client.application_uri = conn.application_uri or application_uri_of(own) or DEFAULT_APPLICATION_URI
                endpoints = await client.connect_and_get_server_endpoints()
                wanted = _POLICIES[policy].URI
                ua_mode = getattr(ua.MessageSecurityMode, mode)
                endpoint = next(
                    (e for e in endpoints if e.SecurityPolicyUri == wanted and e.SecurityMode == ua_mode), None
                )
                if endpoint is None:
                    offered = sorted(
                        {f"{_POLICY_NAMES.get(e.SecurityPolicyUri, e.SecurityPolicyUri)}/{e.SecurityMode.name}"
                         for e in endpoints}
                    )
                    raise _permanent(
                        f"the server does not offer security {policy}/{mode} (it offers {', '.join(offered)}); "
                        "emsedge never falls back to a weaker policy or mode"
                    )
                server_der = _first_certificate(endpoint.ServerCertificate)
                check_server_certificate(conn, server_der)
                checked = conn.server_certificate is not None or conn.trust_dir is not None
                await client.set_security(
                    _POLICIES[policy], str(conn.certificate), str(conn.private_key), None, server_der, ua_mode
                )
            elif conn.application_uri:
                client.application_uri = conn.application_uri
            if conn.username is not None:
                client.set_user(conn.username)
                password = read_secret(conn.password, conn.password_file)
                if password is not None:
                    client.set_password(password)
            await client.connect()
    except (OSError, TimeoutError) as exc:
        await _quiet_disconnect(client)
        if socket_opened or isinstance(exc, socket.gaierror):
            raise
        raise AdapterError(str(classify(exc)), unreachable=True) from exc
    except BaseException:
        await _quiet_disconnect(client)
        raise
    return client, SecuritySetup(policy, mode, checked)


def _first_certificate(der: bytes | None) -> bytes:
    """Servers may send a chain; the leaf is the first DER object."""
    if not der:
        return b""
    if len(der) < 4 or der[0] != 0x30:
        return der
    if der[1] & 0x80:
        n = der[1] & 0x7F
        length = int.from_bytes(der[2 : 2 + n], "big") + 2 + n
    else:
        length = der[1] + 2
    return der[:length]


async def _quiet_disconnect(client: Client) -> None:
    """Close session, channel and socket within 2 s, even while being cancelled.

    asyncua cancels its own background tasks (watchdog, supervisor, publish loop) before it sends
    CloseSession, so a timeout there leaves only the socket, which is closed unconditionally.
    """
    with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
        await client.disconnect()  # best effort: the connection may already be gone
    with contextlib.suppress(Exception):
        client.disconnect_socket()


async def disconnect(client: Client) -> None:
    await _quiet_disconnect(client)


def classify(exc: BaseException) -> AdapterError:
    """Map a library exception to an AdapterError with the right transient flag and a clear message."""
    if isinstance(exc, AdapterError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        name = ua.StatusCode(exc.code).name
        permanent = name in {
            "BadCertificateUntrusted", "BadCertificateInvalid", "BadSecurityChecksFailed",
            "BadSecurityPolicyRejected", "BadIdentityTokenRejected", "BadIdentityTokenInvalid",
            "BadUserAccessDenied", "BadCertificateUriInvalid",
        }
        return AdapterError(f"{name}: {exc}" if str(exc) else name, transient=not permanent)
    if isinstance(exc, TimeoutError):
        return AdapterError("timed out")
    if isinstance(exc, OSError):
        return AdapterError(f"{type(exc).__name__}: {exc.strerror or exc}")
    return AdapterError(f"{type(exc).__name__}: {exc}")


@dataclass
class ResolvedSignal:
    signal: OpcUaSignal
    node_id: ua.NodeId


async def resolve(client: Client, signals: list[OpcUaSignal], deadline_s: float) -> list[ResolvedSignal]:
    """NodeIds for every signal: parse `node`, translate every `browse_path` in one service call.

    `nsu=<namespace uri>;s=...` node ids are mapped to the namespace index the server uses *now*.
    Raises a permanent AdapterError naming each signal whose node id does not parse or whose browse path
    does not exist. Called once per connection: after a server restart namespace indexes and numeric ids
    may have moved, and stale ids are exactly what leaves other gateways stuck on BadNodeIdUnknown.
    """
    problems: list[str] = []
    resolved: list[ResolvedSignal | None] = []
    paths: list[tuple[int, OpcUaSignal, ua.RelativePath]] = []
    namespaces: list[str] | None = None
    for i, s in enumerate(signals):
        if s.node is not None:
            try:
                node_id = ua.NodeId.from_string(s.node)
            except (ValueError, UaStringParsingError) as exc:
                problems.append(f"signal {s.name!r}: node {s.node!r} is not a NodeId ({exc})")
                resolved.append(None)
                continue
            uri = getattr(node_id, "NamespaceUri", None)
            if uri:  # nsu=<uri>;...: the index is looked up on this connection (it may move on restart)
                if namespaces is None:
                    with anyio.fail_after(deadline_s):
                        namespaces = await client.get_namespace_array()
                if uri not in namespaces:
                    problems.append(f"signal {s.name!r}: namespace {uri!r} of node {s.node!r} is not on the server")
                    resolved.append(None)
                    continue
                node_id = ua.NodeId(node_id.Identifier, ua.Int16(namespaces.index(uri)), node_id.NodeIdType)
            resolved.append(ResolvedSignal(s, node_id))
            continue
        assert s.browse_path is not None
        try:
            paths.append((i, s, ua.RelativePath.from_string("/" + s.browse_path.lstrip("/"))))
        except (ValueError, UaStringParsingError) as exc:
            problems.append(f"signal {s.name!r}: browse_path {s.browse_path!r} does not parse ({exc})")
        resolved.append(None)
    if paths:
        root = ua.NodeId(ua.Int32(ObjectIds.RootFolder))
        with anyio.fail_after(deadline_s):
            results = await client.translate_browsepaths(root, [p for _, _, p in paths])
        for (i, s, _), result in zip(paths, results, strict=True):
            if not result.StatusCode.is_good() or not result.Targets:
                problems.append(
                    f"signal {s.name!r}: browse_path {s.browse_path!r} does not exist on the server "
                    f"({result.StatusCode.name})"
                )
                continue
            target = result.Targets[0].TargetId
            resolved[i] = ResolvedSignal(s, ua.NodeId(target.Identifier, target.NamespaceIndex))
    if problems:
        raise AdapterError("; ".join(problems), transient=False)
    return [r for r in resolved if r is not None]

