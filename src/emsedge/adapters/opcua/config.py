"""Config model of the OPC UA adapter: endpoint and security, signals by NodeId or browse path, A&C sources."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from emsedge.config import ConfigModel, DeadbandSpec, Duration, DurationOrZero, EquipmentBase, SignalCommon


class OpcUaSecurity(ConfigModel):
    policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = Field(
        "Basic256Sha256", description="Security policy. None must be written explicitly."
    )
    mode: Literal["None", "Sign", "SignAndEncrypt"] = Field("SignAndEncrypt", description="Message security mode.")

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy None goes with mode None, and a real policy with Sign or SignAndEncrypt")
        return self


class OpcUaConnection(ConfigModel):
    url: str = Field(description="Endpoint URL, opc.tcp://host:4840[/path].")
    security: OpcUaSecurity = Field(
        OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt"),
        description="Security policy and mode; Basic256Sha256 + SignAndEncrypt when omitted.",
    )
    certificate: Path | None = Field(None, description="Client certificate (PEM or DER).")
    private_key: Path | None = Field(None, description="Client private key (PEM).")
    server_certificate: Path | None = Field(None, description="Pinned server certificate.")
    trust_dir: Path | None = Field(None, description="Folder of trusted server certificates.")
    application_uri: str | None = Field(None, description="Client application URI (must match the cert SAN).")
    username: str | None = Field(None, description="User name for UserName identity tokens.")
    password: SecretStr | None = Field(None, description="Password; prefer password_file. Never logged.")
    password_file: Path | None = Field(None, description="File holding the password.")
    allow_insecure_password: bool = Field(False, description="Allow a password over security None. Avoid.")
    timeout: Duration = Field(5.0, description="Deadline for every request.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith("opc.tcp://"):
            raise ValueError("an OPC UA endpoint URL starts with opc.tcp://")
        try:
            port = urlsplit(v).port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"{v!r} has a port out of range (hint: a port is 1 to 65535, e.g. 4840)")
        return v

    @model_validator(mode="after")
    def _password_needs_security(self) -> OpcUaConnection:
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.security.policy == "None" and not self.allow_insecure_password:
            raise ValueError(
                "a password would be sent over security None; use Basic256Sha256 or set "
                "allow_insecure_password: true"
            )
        return self


def _known_encoding(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252, shift_jis)") from None
    return value


class OpcUaSignal(SignalCommon):
    node: str | None = Field(None, description="NodeId string, e.g. ns=2;s=PnP.State or i=2258.")
    browse_path: str | None = Field(None, description="Browse path, e.g. 0:Objects/2:PnP/2:State.")
    sampling_interval: DurationOrZero | None = Field(None, description="Server sampling interval for this item.")
    queue_size: int = Field(1, ge=1, description="Monitored item queue size.")
    deadband: DeadbandSpec | None = Field(
        None, description="Data-change filter the server applies (percent: of the item's EURange); with "
        "publish: on_change the gateway applies it too (percent: of the last reported value)."
    )
    encoding: str | None = Field(
        None, description="Text encoding of this signal's strings; the equipment's `encoding` when omitted."
    )

    _encoding = field_validator("encoding")(_known_encoding)

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaSignal:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of `node` or `browse_path`")
        return self


class OpcUaEventSource(ConfigModel):
    node: str = Field("i=2253", description="Event notifier to subscribe to (default: the Server object).")
    name: str = Field("events", description="Name used in logs.")


class OpcUaEquipment(EquipmentBase):
    adapter: Literal["opcua"] = Field(description="OPC UA client.")
    connection: OpcUaConnection = Field(description="The OPC UA endpoint, its security and identity.")
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="Subscriptions or Read polling.")
    publishing_interval: Duration = Field(0.5, description="Subscription publishing interval.")
    poll_interval: Duration = Field(1.0, description="Read cycle in poll mode.")
    max_nodes_per_read: int = Field(1000, ge=1, description="Chunk size of Read calls in poll mode.")
    signals: list[OpcUaSignal] = Field(min_length=1, description="Signals to monitor or read.")
    encoding: str = Field(
        "utf-8",
        description="Text encoding the server's strings really use (older controllers: latin-1, cp1252); "
        "undecodable bytes are replaced, never fatal.",
    )
    events: list[OpcUaEventSource] = Field(
        default_factory=list, description="Alarms & Conditions sources -> fault_occurred/fault_cleared."
    )

    _encoding = field_validator("encoding")(_known_encoding)
