"""Technician tools: `emsedge browse` (print the address space) and `emsedge opcua-cert` (client cert).

`browse` connects with the same rules as the adapter (connect.py). Without `--security` and without a
`--certificate` it browses with security None and says so on stderr: a technician's first look at a new
machine usually happens before certificates exist. A password is still refused over None unless
`--allow-insecure-password` is given. Output is one line per node, indented by depth:

    <BrowseName>  <NodeId>  <browse path>  [<DataType> = <value>]

so `node:` or `browse_path:` can be copied straight into the config. `--max-nodes` bounds the walk
(other gateways deadlocked browsing >100k nodes, DOMAIN.md §6.14).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from emsedge.adapters.opcua.config import OpcUaConnection, OpcUaSecurity
from emsedge.adapters.opcua.connect import connect, disconnect
from emsedge.adapters.opcua.convert import quality_of, status_name, to_json
from emsedge.errors import AdapterError, ConfigError

# ---------------------------------------------------------------------------------------------------
# Certificates


def generate_certificate(
    uri: str,
    out_dir: Path,
    *,
    common_name: str = "emsedge",
    hostnames: list[str] | None = None,
    days: int = 730,
    name: str = "client",
    key_size: int = 2048,
) -> tuple[Path, Path]:
    """Self-signed application instance certificate (DER) and key (PEM, mode 0600).

    The application URI goes into the SubjectAltName as the OPC UA spec requires (Part 6 §6.2.2); the
    client's ApplicationDescription must carry the same URI (the adapter reads it back from the SAN).
    Key usages follow what OPC UA stacks check: digital signature, non-repudiation, key and data
    encipherment, client and server authentication.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    hosts = hostnames if hostnames is not None else sorted({socket.gethostname(), "localhost"})
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "emsedge")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                          data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = out_dir / f"{name}-cert.der"
    key_path = out_dir / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def main_gen_cert(argv: list[str]) -> int:
    """`emsedge opcua-cert --uri urn:... --out DIR`: write client-cert.der and client-key.pem."""
    p = argparse.ArgumentParser(prog="emsedge opcua-cert", description="Create a self-signed OPC UA client "
                                "certificate whose SubjectAltName carries the application URI.")
    p.add_argument("--uri", required=True, help="application URI, e.g. urn:line1:emsedge")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--cn", default="emsedge", help="certificate common name")
    p.add_argument("--host", action="append", help="DNS name or IP for the SAN (repeatable; default: this host)")
    p.add_argument("--days", type=int, default=730, help="validity in days")
    p.add_argument("--name", default="client", help="file name prefix")
    args = p.parse_args(argv)
    if not args.uri.startswith("urn:") and "://" not in args.uri:
        print(f"error: --uri {args.uri!r} is not a URI (expected urn:...)", file=sys.stderr)
        return 2
    cert, key = generate_certificate(args.uri, args.out, common_name=args.cn, hostnames=args.host,
                                     days=args.days, name=args.name)
    print(f"certificate: {cert}\nprivate key: {key}\napplication_uri: {args.uri}")
    print("config:\n  certificate: " + str(cert) + "\n  private_key: " + str(key) +
          "\n  application_uri: " + args.uri)
    return 0


# ---------------------------------------------------------------------------------------------------
# Browse


@dataclass
class BrowseEntry:
    depth: int
    name: str
    node_id: ua.NodeId
    path: str
    node_class: ua.NodeClass
    data_type: str = ""
    value: Any = None
    status: str | None = None

    def line(self) -> str:
        text = f"{'  ' * self.depth}{self.name}  {self.node_id.to_string()}  {self.path}"
        if self.node_class == ua.NodeClass.Variable:
            shown = json.dumps(self.value, ensure_ascii=False, default=str)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            text += f"  {self.data_type} = {shown}"
            if self.status:
                text += f" ({self.status})"
        return text


async def browse_tree(client: Client, start: ua.NodeId, start_path: str, *, depth: int, max_nodes: int,
                      include_server: bool, deadline_s: float) -> tuple[list[BrowseEntry], bool]:
    """Depth-first walk over hierarchical references; values and data types read in bulk afterwards."""
    entries: list[BrowseEntry] = []
    truncated = False

    async def walk(node_id: ua.NodeId, path: str, level: int) -> None:
        nonlocal truncated
        if level > depth or truncated:
            return
        with anyio.fail_after(deadline_s):
            refs = await client.get_node(node_id).get_children_descriptions()
        for ref in refs:
            child = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex)
            if not include_server and child == ua.NodeId(ua.Int32(ObjectIds.Server)):
                continue
            if len(entries) >= max_nodes:
                truncated = True
                return
            qn = ref.BrowseName
            child_path = f"{path}/{qn.NamespaceIndex}:{qn.Name}"
            entries.append(BrowseEntry(level, qn.Name, child, child_path, ref.NodeClass))
            if ref.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable, ua.NodeClass.View):
                await walk(child, child_path, level + 1)

    await walk(start, start_path, 1)
    variables = [e for e in entries if e.node_class == ua.NodeClass.Variable]
    type_names: dict[ua.NodeId, str] = {}
    for i in range(0, len(variables), 500):
        chunk = variables[i : i + 500]
        with anyio.fail_after(deadline_s):
            values = await client.read_attributes([client.get_node(e.node_id) for e in chunk])
            types = await client.read_attributes([client.get_node(e.node_id) for e in chunk],
                                                 AttributeIds.DataType)
        for e, dv, tv in zip(chunk, values, types, strict=True):
            if quality_of(dv.StatusCode).value == "good":
                e.value = to_json(dv.Value.Value if dv.Value is not None else None)
            else:
                e.status = status_name(dv.StatusCode) if dv.StatusCode is not None else None
            type_id = tv.Value.Value if tv.Value is not None else None
            if isinstance(type_id, ua.NodeId):
                if type_id not in type_names:
                    if type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
                        type_names[type_id] = ObjectIdNames.get(type_id.Identifier, type_id.to_string())
                    else:
                        with anyio.fail_after(deadline_s):
                            bn = await client.get_node(type_id).read_browse_name()
                        type_names[type_id] = bn.Name
                e.data_type = type_names[type_id]
    return entries, truncated


def _browse_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emsedge browse", description="Print an OPC UA server's address space "
                                "with NodeIds, browse paths, data types and current values.")
    p.add_argument("url", help="opc.tcp://host:port[/path]")
    p.add_argument("--depth", type=int, default=6, help="levels below the start node (default 6)")
    p.add_argument("--node", default="i=85", help="start node (default: Objects, i=85)")
    p.add_argument("--max-nodes", type=int, default=5000, help="stop after this many nodes (default 5000)")
    p.add_argument("--include-server", action="store_true", help="also walk the standard Server object")
    p.add_argument("--security", help="Policy,Mode e.g. Basic256Sha256,SignAndEncrypt, or None")
    p.add_argument("--certificate", type=Path, help="client certificate (DER or PEM)")
    p.add_argument("--private-key", type=Path, help="client private key (PEM)")
    p.add_argument("--server-certificate", type=Path, help="pinned server certificate")
    p.add_argument("--trust-dir", type=Path, help="folder of trusted server certificates")
    p.add_argument("--application-uri", help="client application URI (default: from the certificate SAN)")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--allow-insecure-password", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    p.add_argument("--verbose", action="store_true", help="show the OPC UA library's own log messages")
    return p


def _connection_from_args(args: argparse.Namespace) -> OpcUaConnection:
    if args.security is None:
        policy, mode = ("Basic256Sha256", "SignAndEncrypt") if args.certificate else ("None", "None")
        if policy == "None":
            print("note: no --security and no --certificate: browsing with security None", file=sys.stderr)
    else:
        parts = [p.strip() for p in args.security.split(",")]
        policy = parts[0]
        mode = parts[1] if len(parts) > 1 else ("None" if policy == "None" else "SignAndEncrypt")
    return OpcUaConnection(
        url=args.url,
        security=OpcUaSecurity(policy=policy, mode=mode),
        certificate=args.certificate, private_key=args.private_key,
        server_certificate=args.server_certificate, trust_dir=args.trust_dir,
        application_uri=args.application_uri, username=args.username,
        password=None,
        password_file=args.password_file, allow_insecure_password=args.allow_insecure_password,
        timeout=args.timeout,
    )


async def _browse(args: argparse.Namespace) -> int:
    conn = _connection_from_args(args)
    client, _ = await connect(conn)
    try:
        start = ua.NodeId.from_string(args.node)
        with anyio.fail_after(conn.timeout):
            bn = await client.get_node(start).read_browse_name()
        start_path = f"{bn.NamespaceIndex}:{bn.Name}"
        print(f"{bn.Name}  {start.to_string()}  {start_path}")
        entries, truncated = await browse_tree(client, start, start_path, depth=args.depth,
                                               max_nodes=args.max_nodes, include_server=args.include_server,
                                               deadline_s=conn.timeout)
        for e in entries:
            print(e.line())
        if truncated:
            print(f"... stopped after {args.max_nodes} nodes (raise --max-nodes or start lower with --node)")
    finally:
        await disconnect(client)
    return 0


def main_browse(argv: list[str]) -> int:
    """`emsedge browse opc.tcp://host:port [...]`; returns 0, or 1 with one clear line on stderr."""
    args = _browse_parser().parse_args(argv)
    library_log = logging.getLogger("asyncua")
    level = library_log.level
    if not args.verbose:  # asyncua's own warnings (closing a dead channel...) would bury the one clear line
        library_log.setLevel(logging.ERROR)
    try:
        return anyio.run(_browse, args)
    except (ValidationError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AdapterError as exc:
        print(f"error: {args.url}: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, UaError) as exc:
        print(f"error: {args.url}: cannot browse: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        library_log.setLevel(level)
