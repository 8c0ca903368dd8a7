"""Pydantic models of the YAML config and the loader that reports file:line:field.

The config is data (Vector's lesson): frozen models, `extra="forbid"`, a description on every field (it
feeds `emsedge config-schema` and the docs). Runtime state never lives on these objects.

Loading order: YAML file -> equipment profiles merged in (`profile: reflow/generic-10-zone`) ->
environment overrides (`EMSEDGE_MQTT__PASSWORD=...`, nested with `__`) -> validation. Any fault becomes
a `ConfigError` whose messages name the file, the line, the field path and a hint.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    FilePath,
    JsonValue,
    SecretStr,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from emsedge.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# Value types

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`500ms`, `1s`, `2m`, `1h` or a bare number of seconds -> seconds as float."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 1s or 2m")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 500ms, 1s or 2m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    # The JSON Schema (emsedge config-schema) must accept what the YAML accepts: 500ms, 1s, 2m, or a number.
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$", "examples": ["500ms", "1s", "2m"]},
    ]}),
]
"""Seconds; written in YAML as 500ms, 1s, 2m, 1h or a number of seconds."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Backoff(_Model):
    initial: Duration = Field(0.5, description="First reconnect delay.")
    max: Duration = Field(30.0, description="Reconnect delays double up to this cap (with jitter).")


# ---------------------------------------------------------------------------------------------------
# Gateway, MQTT, buffer, HTTP, logging


class GatewayConfig(_Model):
    id: str = Field(description="Gateway id: MQTT client id default and `gateway` field of every message.")
    site: str = Field(description="Plant or site, part of the default topic prefix.")
    area: str = Field("smt", description="Area of the plant, part of the default topic prefix.")
    line: str = Field(description="Line name, part of the default topic prefix.")

    @field_validator("id", "site", "area", "line")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "+#/") or v != v.strip():
            raise ValueError("must be non-empty and contain no '/', '+', '#' or surrounding spaces")
        return v


class TlsConfig(_Model):
    ca_file: FilePath | None = Field(None, description="CA bundle that signed the broker certificate.")
    cert_file: FilePath | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: FilePath | None = Field(None, description="Client private key (mutual TLS).")
    verify_hostname: bool = Field(True, description="Check the broker certificate names the host. Keep on.")


class MqttConfig(_Model):
    url: str | list[str] = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL (mqtt:// or mqtts://), or a list of URLs for failover, tried in order.",
    )
    client_id: str | None = Field(None, description="MQTT client id; defaults to gateway.id.")
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(
        None, description="Broker password; prefer password_file or EMSEDGE_MQTT__PASSWORD. Never logged."
    )
    password_file: FilePath | None = Field(None, description="File holding the broker password (first line).")
    qos: int = Field(1, ge=0, le=2, description="QoS of data messages. 1 gives at-least-once with PUBACK.")
    topic_prefix: str | None = Field(None, description="Topic prefix; default ems/{site}/{area}/{line}.")
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version.")
    keepalive: Duration = Field(30.0, description="MQTT keepalive; a stalled link is noticed after ~1.5x.")
    connect_timeout: Duration = Field(10.0, description="Deadline for the TCP/TLS connect and CONNACK.")
    publish_timeout: Duration = Field(30.0, description="Deadline for a PUBACK before the link is recycled.")
    max_inflight: int = Field(1000, ge=1, le=60000, description="Messages published but not yet acknowledged.")
    tls: TlsConfig | None = Field(None, description="TLS settings for mqtts:// (system CAs when omitted).")
    allow_insecure: bool = Field(
        False, description="Allow a password over plain TCP to a non-loopback broker. Avoid."
    )
    backoff: Backoff = Field(Backoff(initial=0.5, max=30.0), description="Reconnect backoff.")

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @field_validator("url")
    @classmethod
    def _check_urls(cls, v: str | list[str]) -> str | list[str]:
        for url in [v] if isinstance(v, str) else v:
            parts = urlsplit(url)
            if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
                raise ValueError(f"{url!r} is not a broker URL; write mqtt://host:1883 or mqtts://host:8883")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one broker URL")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/")):
            raise ValueError("a topic prefix has no wildcards (+, #) and no leading or trailing '/'")
        return v

    @model_validator(mode="after")
    def _no_plaintext_password(self) -> MqttConfig:
        if (self.password is None and self.password_file is None) or self.allow_insecure:
            return self
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("mqtt", "tcp") and not _is_loopback(parts.hostname or ""):
                raise ValueError(
                    f"a password would travel in clear text to {parts.hostname}; use mqtts:// "
                    "or set allow_insecure: true"
                )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BufferConfig(_Model):
    path: Path = Field(Path("/var/lib/emsedge/buffer.db"), description="SQLite file of the durable buffer.")
    max_bytes: ByteSize = Field(ByteSize(1 << 30), description="Size cap; the oldest records are evicted.")
    max_age: Duration | None = Field(None, description="Records older than this are evicted (and counted).")
    sync: Literal["full", "normal"] = Field(
        "full", description="full: every append survives a power cut; normal: may lose the last commits."
    )
    min_free_bytes: ByteSize = Field(
        ByteSize(64 << 20), description="Free disk floor; below it appends wait (back-pressure)."
    )
    replay_rate: float | None = Field(
        None, gt=0, description="Backlog messages per second replayed beside live data; null: unlimited."
    )
    linger: Duration = Field(0.02, description="How long the writer gathers records into one transaction.")
    batch_max: int = Field(5000, ge=1, description="Most records in one write transaction.")
    max_inflight_bytes: ByteSize = Field(
        ByteSize(8 << 20),
        description="Most payload bytes handed to an output at once: bounds memory during a replay.",
    )


class HttpConfig(_Model):
    listen: str | None = Field(
        "127.0.0.1:9108", description="host:port of /healthz and /metrics; null turns the listener off."
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            _host, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValueError("write host:port, e.g. 127.0.0.1:9108 (or :9108 for every interface)")
        return v


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: coloured key=value on a terminal, JSON under systemd/Docker."
    )


# ---------------------------------------------------------------------------------------------------
# Equipment: common parts

EquipmentType = Literal["pick_and_place", "reflow_oven", "aoi", "spi", "xray", "ict", "fct", "other"]

EventFlag = Literal["station_state"]

EmittedEvent = Literal[
    "unit_processed",
    "unit_tested",
    "unit_inspected",
    "materials_installed",
    "components_placed",
    "fault_occurred",
    "fault_cleared",
    "station_state_changed",
]


class SignalCommon(_Model):
    name: str = Field(description="Signal name in payloads (snake_case).")
    unit: str | None = Field(None, description="Unit of the value, e.g. Cel, kPa, cm/min, ppm.")
    event: EventFlag | None = Field(
        None, description="station_state: changes become station_state_changed events, not telemetry."
    )
    map: dict[int | str, int] | None = Field(
        None, description="With event: station_state, the machine's value -> SEMI E58 state code."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", v):
            raise ValueError("a signal name starts with a letter or _ and holds letters, digits, _ . -")
        return v

    @model_validator(mode="after")
    def _map_needs_event(self) -> SignalCommon:
        if self.map is not None and self.event is None:
            raise ValueError("`map` is only used together with `event: station_state`")
        return self


class Trigger(_Model):
    on_change: str = Field(description="Signal whose change fires the trigger.")
    emit: EmittedEvent = Field(description="Event type emitted.")
    serial: str | None = Field(None, description="Signal holding the board serial, copied to event.serial.")
    include: list[str] = Field(default_factory=list, description="Signals snapshotted into the event.")
    fields: dict[str, Any] = Field(default_factory=dict, description="Constant fields added to the event.")
    skip_initial: bool = Field(
        True,
        description="Do not fire on the first value seen after the gateway starts (the last good value is "
        "kept across reconnects, so a change during an outage fires once when the link returns).",
    )


class EquipmentBase(_Model):
    id: str = Field(description="Equipment id, part of the topics; unique in the config.")
    type: EquipmentType = Field(description="Kind of machine.")
    enabled: bool = Field(True, description="false keeps the entry but does not connect.")
    profile: str | None = Field(None, description="Equipment profile merged under this entry.")
    triggers: list[Trigger] = Field(default_factory=list, description="Events fired by signal changes.")
    backoff: Backoff = Field(Backoff(initial=0.5, max=30.0), description="Reconnect backoff.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
            raise ValueError("an equipment id holds letters, digits, _ . - (it is part of MQTT topics)")
        return v

    def configured_signals(self) -> list[SignalCommon]:
        """The signals this equipment reads (status variables for HSMS)."""
        return list(getattr(self, "signals", []))

    def signal_names(self) -> list[str]:
        return [s.name for s in self.configured_signals()]

    @model_validator(mode="after")
    def _triggers_name_signals(self) -> EquipmentBase:
        known = set(self.signal_names())
        if not known:
            return self
        for i, trig in enumerate(self.triggers):
            for ref in [trig.on_change, trig.serial, *trig.include]:
                if ref is not None and ref not in known:
                    raise ValueError(
                        f"triggers[{i}] names signal {ref!r}, which is not configured{_did_you_mean(ref, known)}"
                    )
        names = self.signal_names()
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"signal names must be unique; repeated: {', '.join(sorted(dupes))}")
        return self


# ---------------------------------------------------------------------------------------------------
# Modbus TCP

ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
REGISTER_WIDTH: dict[str, int] = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4,
    "float64": 4,
}


class ModbusConnection(_Model):
    host: str = Field(description="Host name or IP of the Modbus TCP server.")
    port: int = Field(502, ge=1, le=65535, description="TCP port.")
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave/device) id.")
    timeout: Duration = Field(1.0, description="Deadline for one request.")


class ModbusSignal(SignalCommon):
    table: Literal["holding", "input", "coil", "discrete"] = Field(description="Modbus table.")
    address: int = Field(ge=0, le=65535, description="0-based protocol offset within the table.")
    type: ModbusType = Field("uint16", description="Data type of the value.")
    word_order: Literal["big", "little"] = Field("big", description="Order of 16-bit words (multi-register).")
    byte_order: Literal["big", "little"] = Field("big", description="Order of bytes inside each word.")
    scale: float = Field(1.0, description="value = raw * scale + offset.")
    offset: float = Field(0.0, description="value = raw * scale + offset.")
    bit: int | None = Field(None, ge=0, le=15, description="For type bool on a register: the bit number.")
    length: int | None = Field(None, ge=1, le=125, description="For type string: length in registers.")

    @model_validator(mode="after")
    def _check_type(self) -> ModbusSignal:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise ValueError(f"a {self.table} holds single bits: use type: bool")
        if self.type == "bool" and not bit_table and self.bit is None:
            raise ValueError("type bool on a register needs `bit: n` (0-15)")
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise ValueError("`bit` only applies to type bool on a holding or input register")
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs `length` (in registers, 2 characters each)")
        if self.length is not None and self.type != "string":
            raise ValueError("`length` only applies to type string")
        if self.address + self.register_count > 65536:
            raise ValueError("the value runs past the end of the table (address + width > 65536)")
        return self

    @property
    def register_count(self) -> int:
        if self.type == "string":
            return self.length or 1
        return REGISTER_WIDTH[self.type]


class ModbusEquipment(EquipmentBase):
    adapter: Literal["modbus"] = Field(description="Modbus TCP client.")
    connection: ModbusConnection
    poll_interval: Duration = Field(1.0, description="Poll period; kept without drift.")
    max_gap: int = Field(8, ge=0, le=100, description="Unused registers merged into one read to save requests.")
    max_registers_per_read: int = Field(125, ge=1, le=125, description="Register count cap per request.")
    max_bits_per_read: int = Field(2000, ge=1, le=2000, description="Coil/discrete count cap per request.")
    signals: list[ModbusSignal] = Field(min_length=1, description="Signals read each poll.")


# ---------------------------------------------------------------------------------------------------
# OPC UA


class OpcUaSecurity(_Model):
    policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = Field(
        "Basic256Sha256", description="Security policy. None must be written explicitly."
    )
    mode: Literal["None", "Sign", "SignAndEncrypt"] = Field("SignAndEncrypt", description="Message security mode.")

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy None goes with mode None, and a real policy with Sign or SignAndEncrypt")
        return self


class OpcUaConnection(_Model):
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


class Deadband(_Model):
    type: Literal["absolute", "percent"] = Field(description="absolute units, or percent of EURange.")
    value: float = Field(ge=0, description="Changes smaller than this are not reported.")


class OpcUaSignal(SignalCommon):
    node: str | None = Field(None, description="NodeId string, e.g. ns=2;s=PnP.State or i=2258.")
    browse_path: str | None = Field(None, description="Browse path, e.g. 0:Objects/2:PnP/2:State.")
    sampling_interval: Duration | None = Field(None, description="Server sampling interval for this item.")
    queue_size: int = Field(1, ge=1, description="Monitored item queue size.")
    deadband: Deadband | None = Field(None, description="Data-change filter.")

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaSignal:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of `node` or `browse_path`")
        return self


class OpcUaEventSource(_Model):
    node: str = Field("i=2253", description="Event notifier to subscribe to (default: the Server object).")
    name: str = Field("events", description="Name used in logs.")


class OpcUaEquipment(EquipmentBase):
    adapter: Literal["opcua"] = Field(description="OPC UA client.")
    connection: OpcUaConnection
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="Subscriptions or Read polling.")
    publishing_interval: Duration = Field(0.5, description="Subscription publishing interval.")
    poll_interval: Duration = Field(1.0, description="Read cycle in poll mode.")
    max_nodes_per_read: int = Field(1000, ge=1, description="Chunk size of Read calls in poll mode.")
    signals: list[OpcUaSignal] = Field(min_length=1, description="Signals to monitor or read.")
    events: list[OpcUaEventSource] = Field(
        default_factory=list, description="Alarms & Conditions sources -> fault_occurred/fault_cleared."
    )


# ---------------------------------------------------------------------------------------------------
# SECS/GEM over HSMS


class HsmsConnection(_Model):
    host: str = Field("127.0.0.1", description="Equipment host (active) or listen address (passive).")
    port: int = Field(5000, ge=1, le=65535, description="TCP port.")
    session_id: int = Field(0, ge=0, le=0x7FFF, description="HSMS session (device) id.")
    mode: Literal["active", "passive"] = Field("active", description="active: the gateway connects.")
    t3: Duration = Field(45.0, description="Reply timeout.")
    t5: Duration = Field(10.0, description="Connect separation timeout (minimum delay between connects).")
    t6: Duration = Field(5.0, description="Control transaction timeout.")
    t7: Duration = Field(10.0, description="Not-selected timeout.")
    t8: Duration = Field(5.0, description="Inter-character timeout within one message.")
    linktest_interval: Duration = Field(30.0, description="Linktest period; 0 disables.")
    max_message_bytes: ByteSize = Field(ByteSize(16 << 20), description="Frames longer than this are refused.")


class StatusVariable(SignalCommon):
    svid: int = Field(ge=0, description="Status variable id.")


class ReportDefinition(_Model):
    rptid: int = Field(ge=0, description="Report id defined by the host.")
    vids: list[int] = Field(min_length=1, description="Variable ids in the report.")
    names: list[str] | None = Field(None, description="Names of the values, in vids order.")

    @model_validator(mode="after")
    def _names_match(self) -> ReportDefinition:
        if self.names is not None and len(self.names) != len(self.vids):
            raise ValueError(f"`names` has {len(self.names)} entries but `vids` has {len(self.vids)}")
        return self


_DEFAULT_PASS_VALUES: tuple[str | int | bool, ...] = ("PASS", "pass", "OK", "ok", "GOOD", 1, True)


class CollectionEvent(_Model):
    name: str = Field(description="Name of the collection event.")
    ceid: int = Field(ge=0, description="Collection event id.")
    reports: list[int] = Field(default_factory=list, description="Report ids linked to the event.")
    emit: EmittedEvent | None = Field(None, description="Event type emitted; default: a generic event.")
    serial: str | None = Field(None, description="Report value holding the board serial.")
    result: str | None = Field(None, description="Report value holding the pass/fail result.")
    defects: str | None = Field(None, description="Report value holding the defect list.")
    pass_values: list[str | int | bool] = Field(
        default_factory=lambda: list(_DEFAULT_PASS_VALUES),
        description="Raw results that mean pass; everything else is fail.",
    )


class AlarmConfig(_Model):
    enable_all: bool = Field(True, description="Send S5F3 enabling every alarm after establishing.")
    ids: list[int] = Field(default_factory=list, description="Enable only these ALIDs (when enable_all: false).")


class HsmsEquipment(EquipmentBase):
    adapter: Literal["hsms"] = Field(description="SECS/GEM host over HSMS.")
    connection: HsmsConnection = Field(HsmsConnection(), description="HSMS connection and timers.")
    poll_interval: Duration = Field(5.0, description="Status variable poll period (S1F3).")
    status_variables: list[StatusVariable] = Field(default_factory=list, description="SVs polled.")
    reports: list[ReportDefinition] = Field(default_factory=list, description="Reports defined (S2F33).")
    events: list[CollectionEvent] = Field(default_factory=list, description="Events linked and enabled.")
    alarms: AlarmConfig = Field(AlarmConfig(), description="Alarm enabling.")

    def configured_signals(self) -> list[SignalCommon]:
        return list(self.status_variables)

    @model_validator(mode="after")
    def _events_reference_reports(self) -> HsmsEquipment:
        known = {r.rptid for r in self.reports}
        for ev in self.events:
            missing = [r for r in ev.reports if r not in known]
            if missing:
                raise ValueError(f"event {ev.name!r} links report(s) {missing} that are not defined in `reports`")
        return self


# ---------------------------------------------------------------------------------------------------
# Third-party adapters (entry point group `emsedge.adapters`)

BUILTIN_ADAPTERS = ("modbus", "opcua", "hsms")


def installed_plugins() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="emsedge.adapters") if ep.name not in BUILTIN_ADAPTERS)


class PluginSignal(SignalCommon):
    model_config = ConfigDict(extra="allow", frozen=True)


class PluginEquipment(EquipmentBase):
    """Equipment served by an adapter from another package; its own fields live under `options`."""

    adapter: str = Field(
        description="Name of an installed adapter plugin (entry point emsedge.adapters).",
        # Editors can only know the plugins installed where the schema was generated.
        json_schema_extra=lambda schema: schema.update(enum=list[JsonValue](installed_plugins())),
    )
    connection: dict[str, Any] = Field(default_factory=dict, description="Connection settings of the plugin.")
    options: dict[str, Any] = Field(default_factory=dict, description="Further plugin-specific settings.")
    poll_interval: Duration = Field(1.0, description="Poll period when the plugin is a polled adapter.")
    signals: list[PluginSignal] = Field(default_factory=list, description="Signals; extra keys go to the plugin.")

    @field_validator("adapter")
    @classmethod
    def _installed(cls, v: str) -> str:
        plugins = installed_plugins()
        if v not in plugins:
            known = [*BUILTIN_ADAPTERS, *plugins]
            raise ValueError(
                f"unknown adapter {v!r}{_did_you_mean(v, known)} (built in: {', '.join(BUILTIN_ADAPTERS)}; "
                f"installed plugins: {', '.join(plugins) or 'none'})"
            )
        return v


def _adapter_tag(value: Any) -> str | None:
    adapter = value.get("adapter") if isinstance(value, dict) else getattr(value, "adapter", None)
    if adapter is None:
        return None
    return adapter if adapter in BUILTIN_ADAPTERS else "plugin"


Equipment = Annotated[
    Annotated[ModbusEquipment, Tag("modbus")]
    | Annotated[OpcUaEquipment, Tag("opcua")]
    | Annotated[HsmsEquipment, Tag("hsms")]
    | Annotated[PluginEquipment, Tag("plugin")],
    Discriminator(
        _adapter_tag,
        custom_error_type="adapter_missing",
        custom_error_message="required field 'adapter' is missing",
    ),
]


# ---------------------------------------------------------------------------------------------------
# Root


class Settings(BaseSettings):
    """The whole config. YAML is the base; EMSEDGE_* environment variables override it."""

    model_config = SettingsConfigDict(
        env_prefix="EMSEDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
    )

    gateway: GatewayConfig = Field(description="Who this gateway is; the default topic prefix uses it.")
    mqtt: MqttConfig = Field(MqttConfig(), description="The MES broker.")
    buffer: BufferConfig = Field(BufferConfig(), description="The durable local buffer.")
    http: HttpConfig = Field(HttpConfig(), description="Health and metrics endpoint.")
    logging: LoggingConfig = Field(LoggingConfig(), description="Logging.")
    equipment: list[Equipment] = Field(default_factory=list, description="The line's machines.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (a password injected by systemd or Docker wins).
        return (env_settings, init_settings, file_secret_settings)

    @model_validator(mode="after")
    def _unique_ids(self) -> Settings:
        ids = [e.id for e in self.equipment]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"equipment ids must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def topic_prefix(self) -> str:
        g = self.gateway
        return self.mqtt.topic_prefix or f"ems/{g.site}/{g.area}/{g.line}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or self.gateway.id


# ---------------------------------------------------------------------------------------------------
# Loading with located errors


@dataclass(frozen=True)
class Position:
    file: Path
    line: int  # 1-based
    column: int  # 1-based


class _PositionIndex:
    """Maps a path of keys/indices in the loaded document to where it was written."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str | int, ...], Position] = {}

    def add(self, node: yaml.Node, file: Path, path: tuple[str | int, ...] = ()) -> None:
        self.positions.setdefault(path, Position(file, node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.positions[(*path, key)] = Position(
                    file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
                )
                self._add_children(value_node, file, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.positions[(*path, i)] = Position(file, item.start_mark.line + 1, item.start_mark.column + 1)
                self._add_children(item, file, (*path, i))

    def _add_children(self, node: yaml.Node, file: Path, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.add(node, file, path)

    def find(self, path: tuple[str | int, ...]) -> Position | None:
        for cut in range(len(path), -1, -1):
            if (pos := self.positions.get(path[:cut])) is not None:
                return pos
        return None


def _did_you_mean(word: str, options: object) -> str:
    matches = difflib.get_close_matches(word, [str(o) for o in options], n=1)  # type: ignore[attr-defined]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _model_at(path: tuple[str | int, ...], data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` (for 'did you mean' hints)."""
    model: Any = Settings
    node: Any = data
    for part in path:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            continue
        if not isinstance(node, dict) or model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        node = node.get(part)
        model = _annotation_model(field.annotation, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _annotation_model(annotation: Any, value: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = get_args(annotation)
    if get_origin(annotation) is list and args:
        return _annotation_model(args[0], value[0] if isinstance(value, list) and value else None)
    candidates = [a for a in _flatten(args) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(candidates) == 1:
        return candidates[0]
    if isinstance(value, dict) and "adapter" in value:
        for c in candidates:
            field = c.model_fields.get("adapter")
            if field is not None and value["adapter"] in get_args(field.annotation):
                return c
    return None


def _flatten(args: tuple[Any, ...]) -> Iterator[Any]:
    for a in args:
        inner = get_args(a)
        if inner and not (isinstance(a, type) and issubclass(a, BaseModel)):
            yield from _flatten(inner)
        else:
            yield a


_HINTS = {
    "missing": "this field is required",
    "literal_error": "use one of the allowed values",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "bool_parsing": "write true or false",
    "list_type": "write a YAML list (- item, or [a, b])",
    "model_type": "write a mapping (key: value)",
    "dict_type": "write a mapping (key: value)",
    "byte_size": "write a size such as 512MiB or 1GiB",
    "string_type": "write text (quote it if it looks like a number)",
    "path_not_file": "no such file; relative paths are relative to the working directory (/ under systemd)",
    "adapter_missing": "say which adapter talks to this machine: adapter: modbus | opcua | hsms",
}


def _format_problem(err: Any, data: Any, index: _PositionIndex, file: Path) -> str:
    loc: tuple[str | int, ...] = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p in (*BUILTIN_ADAPTERS, "plugin"))
    )
    # Pydantic puts model-level validator errors on the model; tagged unions add the tag to the path.
    field_path = _dotted(loc) or "(top level)"
    pos = index.find(loc)
    where = f"{pos.file}:{pos.line}:{pos.column}" if pos else f"{file}"
    kind = err["type"]
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    hint = _HINTS.get(kind, "")
    if kind == "extra_forbidden" and loc:
        model = _model_at(loc[:-1], data)
        known = list(model.model_fields) if model else []
        msg = f"unknown field {loc[-1]!r}"
        hint = (
            f"{_did_you_mean(str(loc[-1]), known).removeprefix('; ')} " if known else ""
        ) + (f"allowed here: {', '.join(known)}" if known else "remove it")
    elif kind == "literal_error":
        hint = ""
    elif kind == "path_not_file":
        msg = f"{err.get('input')} does not exist or is not a file"
    elif kind == "missing" and loc:
        msg = f"required field {loc[-1]!r} is missing"
        hint = ""
    if pos and pos.file != file:
        hint = (hint + "; " if hint else "") + f"(from profile {pos.file.name})"
    return f"{where}: {field_path}: {msg}" + (f" (hint: {hint.strip()})" if hint.strip() else "")


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(file: Path, *, with_nodes: bool = False) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file (libyaml's loader when present). The node tree, which holds the positions for
    error messages, costs several times the data's memory, so it is only built when asked for: after
    validation failed (a 10k-signal file loads in ~0.4 s and ~40 MB less peak memory without it)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: file not found (hint: check the path given with -c)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read the file: {exc}"]) from None
    loader = _YamlLoader(text)
    try:
        if with_nodes:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        else:
            node, data = None, loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"{file}{line}: YAML syntax error: {exc.problem} (hint: check indentation and quoting)"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    return data, node


def profile_search_path(config_file: Path) -> list[Path]:
    """Where `profile: <type>/<model>` is looked up, first match wins."""
    paths = []
    if env := os.environ.get("EMSEDGE_PROFILES"):
        paths += [Path(p) for p in env.split(os.pathsep) if p]
    here = config_file.resolve().parent
    paths += [here / "adapters", here.parent / "adapters", Path("/etc/emsedge/adapters"), Path.cwd() / "adapters"]
    paths.append(Path(__file__).resolve().parents[2] / "adapters")  # source checkout / editable install
    return paths


def _merge_profile(profile: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """Entry over profile: mappings merge key by key; `signals` and `status_variables` merge by name."""
    merged: dict[str, Any] = dict(profile)
    for key, value in entry.items():
        base = merged.get(key)
        if key in ("signals", "status_variables") and isinstance(base, list) and isinstance(value, list):
            by_name = {s.get("name"): dict(s) for s in base if isinstance(s, dict)}
            order = [s.get("name") for s in base if isinstance(s, dict)]
            for s in value:
                if not isinstance(s, dict):
                    continue
                name = s.get("name")
                if name in by_name:
                    by_name[name] = _merge_profile(by_name[name], s)
                else:
                    by_name[name] = dict(s)
                    order.append(name)
            merged[key] = [by_name[n] for n in order if not by_name[n].get("remove")]
        elif isinstance(base, dict) and isinstance(value, dict):
            merged[key] = _merge_profile(base, value)
        else:
            merged[key] = value
    merged.pop("profile", None)
    return merged


def _positions(file: Path, profiles: Mapping[int, Path]) -> _PositionIndex:
    """Where everything was written: the config file first, then each equipment's profile file."""
    index = _PositionIndex()
    _, node = _load_yaml(file, with_nodes=True)
    if node is not None:
        index.add(node, file)
    for i, profile_file in profiles.items():
        _, profile_node = _load_yaml(profile_file, with_nodes=True)
        if profile_node is not None:
            profile_index = _PositionIndex()
            profile_index.add(profile_node, profile_file, ("equipment", i))
            # Positions of profile values point into the profile file unless the entry overrides them.
            for path, pos in profile_index.positions.items():
                index.positions.setdefault(path, pos)
    return index


def _resolve_profiles(data: Any, file: Path) -> tuple[dict[int, Path], list[str]]:
    """Merge each `profile:` into its entry; returns the profile file per equipment index and problems."""
    used: dict[int, Path] = {}
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("equipment"), list):
        return used, problems
    search = profile_search_path(file)
    for i, entry in enumerate(data["equipment"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("profile"), str):
            continue
        name = entry["profile"]
        found = next((p / f"{name}.yaml" for p in search if (p / f"{name}.yaml").is_file()), None)
        if found is None:
            available = sorted(
                str(p.relative_to(d).with_suffix("")) for d in search if d.is_dir() for p in d.glob("*/*.yaml")
            )
            suggestion = _did_you_mean(name, available).removeprefix("; ")
            hint = suggestion or "available: " + ", ".join(available[:12])
            pos = _positions(file, {}).find(("equipment", i, "profile"))
            where = f"{pos.file}:{pos.line}:{pos.column}" if pos else str(file)
            problems.append(f"{where}: equipment[{i}].profile: profile {name!r} not found (hint: {hint})")
            continue
        profile_data, _ = _load_yaml(found)
        if not isinstance(profile_data, dict):
            problems.append(f"{found}: a profile is a mapping of equipment fields")
            continue
        used[i] = found
        profile_data = {k: v for k, v in profile_data.items() if k not in ("description", "model", "vendor")}
        data["equipment"][i] = _merge_profile(profile_data, entry)
    return used, problems


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, merge profiles, apply environment overrides and validate. Raises ConfigError."""
    file = Path(path)
    data, _ = _load_yaml(file)
    if data is None:
        raise ConfigError([f"{file}: the file is empty (hint: start from config/example.yaml)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{file}:1:1: the top level must be a mapping with gateway, mqtt, equipment, ..."])
    profiles, problems = _resolve_profiles(data, file)
    if problems:
        raise ConfigError(problems)
    saved = None
    if environ is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        index = _positions(file, profiles)
        raise ConfigError([_format_problem(e, data, index, file) for e in exc.errors()]) from None
    except TypeError as exc:  # e.g. a top-level key that is not a string
        raise ConfigError([f"{file}: {exc}"]) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret from the config or its file (first line, trailing newline stripped)."""
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    try:
        return file.read_text(encoding="utf-8").splitlines()[0] if file.stat().st_size else ""
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read secret file: {exc.strerror}"]) from None


def summary(settings: Settings) -> str:
    """Short human summary printed by `check-config` (never shows secrets)."""
    lines = [
        f"gateway {settings.gateway.id} ({settings.gateway.site}/{settings.gateway.area}/{settings.gateway.line})",
        f"mqtt    {', '.join(settings.mqtt.urls)} qos={settings.mqtt.qos} prefix={settings.topic_prefix}",
        f"buffer  {settings.buffer.path} max={settings.buffer.max_bytes.human_readable()} sync={settings.buffer.sync}",
        f"equipment: {len(settings.equipment)}",
    ]
    for e in settings.equipment:
        n = len(e.signal_names())
        extra = f", {len(e.triggers)} triggers" if e.triggers else ""
        state = "" if e.enabled else " (disabled)"
        lines.append(f"  {e.id:<16} {e.type:<15} {e.adapter:<7} {n} signals{extra}{state}")
    return "\n".join(lines)
