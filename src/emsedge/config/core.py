"""The gateway's own config: who it is, the broker, the buffer, the HTTP endpoint, logging; and `Settings`,
the root of the file, whose `equipment` entries are validated by the model each adapter registers.

YAML is the base; `EMSEDGE_*` environment variables override it (`EMSEDGE_MQTT__PASSWORD=...`, nested with
`__`), so a secret injected by systemd or Docker wins over the file.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from emsedge.config.equipment import Equipment
from emsedge.config.types import (
    Backoff,
    ConfigModel,
    Duration,
    DurationOrZero,
    Size,
    format_duration,
    validating_file,
)
from emsedge.errors import ConfigError

TOPIC_MAX_BYTES = 65_535
"""An MQTT topic (and any MQTT string: client id, user name) holds at most this many UTF-8 bytes."""
NAME_MAX_BYTES = 256
"""Gateway fields, client id and equipment ids: short enough that every topic built from them fits."""
PREFIX_MAX_BYTES = 1024
"""`topic_prefix`: with an equipment id and the suffix, far below `TOPIC_MAX_BYTES`."""
MIN_BUFFER_BYTES = 16 * 1024
"""`buffer.max_bytes` floor: room for the largest ordinary record (a 200-reading telemetry message is about
12 KiB); below it the buffer evicts what it just stored and MES receives nothing."""


def mqtt_text(value: str, *, limit: int = NAME_MAX_BYTES, what: str = "it is part of every MQTT topic") -> str:
    """Refuse what a broker refuses: control characters, surrogates and non-characters (MQTT 5 §1.5.4
    closes the connection on them), and text longer than `limit` UTF-8 bytes."""
    for i, char in enumerate(value, start=1):
        code = ord(char)
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(
                f"holds the control character U+{code:04X} at position {i} (hint: remove it; {what}, "
                "and a broker closes the connection on control characters)"
            )
        if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            raise ValueError(
                f"holds the Unicode non-character U+{code:04X} at position {i} (hint: remove it; {what}, "
                "and a broker closes the connection on non-characters)"
            )
    size = len(value.encode("utf-8"))
    if size > limit:
        raise ValueError(
            f"is {size:,} bytes long; at most {limit:,} (hint: {what}, and an MQTT topic holds at most "
            f"{TOPIC_MAX_BYTES:,} bytes)"
        )
    return value


def utf8_secret_file(v: Path | None) -> Path | None:
    """A secret file must hold UTF-8 text (a Latin-1 file would fail at the first connect, not here)."""
    if v is not None:
        try:
            v.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{v} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}) "
                "(hint: save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
            ) from None
        except OSError:
            pass  # unreadable here (check-config as another user): reported when the gateway reads it
    return v


def redact_url(url: str) -> str:
    """`url` with any user name and password replaced by `***` (for messages and logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


class GatewayConfig(ConfigModel):
    id: str = Field(description="Gateway id: MQTT client id default and `gateway` field of every message.")
    site: str = Field(description="Plant or site, part of the default topic prefix.")
    area: str = Field("smt", description="Area of the plant, part of the default topic prefix.")
    line: str = Field(description="Line name, part of the default topic prefix.")

    @field_validator("id", "site", "area", "line")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "+#/") or v != v.strip():
            raise ValueError("must be non-empty and contain no '/', '+', '#' or surrounding spaces")
        return mqtt_text(v)


class TlsConfig(ConfigModel):
    ca_file: FilePath | None = Field(None, description="CA bundle that signed the broker certificate.")
    cert_file: FilePath | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: FilePath | None = Field(None, description="Client private key (mutual TLS).")
    verify_hostname: bool = Field(True, description="Check the broker certificate names the host. Keep on.")


class MqttConfig(ConfigModel):
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
    status_interval: Duration = Field(
        10.0, description="How often the retained online status (backlog, loss, equipment) is refreshed; "
        "`emsedge fleet` calls a line stale after 3x this without a refresh.",
    )
    tls: TlsConfig | None = Field(None, description="TLS settings for mqtts:// (system CAs when omitted).")
    allow_insecure: bool = Field(
        False, description="Allow a password over plain TCP to a non-loopback broker. Avoid."
    )
    backoff: Backoff = Field(Backoff(initial=0.5, max=30.0), description="Reconnect backoff.")
    probe_interval: Duration | None = Field(
        1.0,
        description=(
            "While no broker accepts TCP connections, check their ports this often (a TCP connect only, "
            "0.5-1.5x jitter) and reconnect as soon as one accepts instead of waiting out the backoff; "
            "null: wait out the backoff."
        ),
    )
    telemetry_format: Literal["full", "compact"] = Field(
        "full", description="full: emsedge/telemetry@1 (every reading with its unit, quality and ts). compact: "
        "emsedge/telemetry-compact@1 (readings as {signal: value}, units once in the retained "
        "{prefix}/{equipment}/meta message); see docs/mqtt-contract.md."
    )

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @field_validator("url")
    @classmethod
    def _check_urls(cls, v: str | list[str]) -> str | list[str]:
        for url in [v] if isinstance(v, str) else v:
            parts = urlsplit(url)
            shown = redact_url(url)
            if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
                raise ValueError(f"{shown!r} is not a broker URL; write mqtt://host:1883 or mqtts://host:8883")
            if parts.username is not None or parts.password is not None:
                raise ValueError(
                    f"{shown!r} holds credentials (hint: move them to mqtt.username and mqtt.password_file; "
                    "a URL is printed in logs, and the plain-TCP password guard looks at password fields)"
                )
            try:
                port = parts.port
            except ValueError:
                port = -1
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(
                    f"{shown!r} has a port out of range (hint: a port is 1 to 65535, e.g. 1883 or 8883)"
                )
        if isinstance(v, list) and not v:
            raise ValueError("give at least one broker URL")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/")):
            raise ValueError("a topic prefix has no wildcards (+, #) and no leading or trailing '/'")
        return v if v is None else mqtt_text(v, limit=PREFIX_MAX_BYTES)

    @field_validator("client_id", "username")
    @classmethod
    def _check_mqtt_strings(cls, v: str | None) -> str | None:
        return v if v is None else mqtt_text(v, what="the broker receives it in the CONNECT packet")

    _secret_is_text = field_validator("password_file")(utf8_secret_file)

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


class BufferConfig(ConfigModel):
    path: Path = Field(Path("/var/lib/emsedge/buffer.db"), description="SQLite file of the durable buffer.")
    max_bytes: Size = Field(ByteSize(1 << 30), description="Size cap; the oldest records are evicted.")
    max_age: Duration | None = Field(None, description="Records older than this are evicted (and counted).")
    sync: Literal["full", "normal"] = Field(
        "full", description="full: every append survives a power cut; normal: may lose the last commits."
    )
    min_free_bytes: Size = Field(
        ByteSize(64 << 20), description="Free disk floor; below it appends wait (back-pressure)."
    )
    replay_rate: float | None = Field(
        None, gt=0, description="Backlog messages per second replayed beside live data; null: unlimited."
    )
    linger: DurationOrZero = Field(0.02, description="How long the writer gathers records into one transaction.")
    batch_max: int = Field(5000, ge=1, description="Most records in one write transaction.")
    max_inflight_bytes: Size = Field(
        ByteSize(8 << 20),
        description="Most payload bytes handed to an output at once: bounds memory during a replay.",
    )

    @field_validator("max_bytes")
    @classmethod
    def _holds_a_record(cls, v: ByteSize) -> ByteSize:
        # Only for a config file: tests and tools build small buffers in Python on purpose.
        if validating_file() and v < MIN_BUFFER_BYTES:
            raise ValueError(
                f"{int(v):,} bytes cannot hold one record; at least {MIN_BUFFER_BYTES:,} (16KiB) "
                "(hint: size it for the longest outage to ride out, e.g. 1GiB)"
            )
        return v


class HttpAuthConfig(ConfigModel):
    """Who may read the page, /healthz and /metrics. Secrets live in files, never in the config itself."""

    bearer_token_file: FilePath | None = Field(
        None, description="File whose first line is the token; clients send `Authorization: Bearer <token>`."
    )
    basic_auth_file: FilePath | None = Field(
        None, description="File whose first line is `user:password` for HTTP basic auth (what a browser asks)."
    )

    _secrets_are_text = field_validator("bearer_token_file", "basic_auth_file")(utf8_secret_file)

    @model_validator(mode="after")
    def _one_method(self) -> HttpAuthConfig:
        if (self.bearer_token_file is None) == (self.basic_auth_file is None):
            raise ValueError("give exactly one of bearer_token_file or basic_auth_file")
        return self


class HttpTlsConfig(ConfigModel):
    cert_file: FilePath = Field(description="PEM certificate (chain) the endpoint presents.")
    key_file: FilePath = Field(description="PEM private key of that certificate.")


class HttpConfig(ConfigModel):
    listen: str | None = Field(
        "127.0.0.1:9108",
        description="host:port of the status page, /healthz and /metrics; null turns the listener off.",
    )
    auth: HttpAuthConfig | None = Field(
        None, description="Required when `listen` is not a loopback address (unless allow_insecure is set)."
    )
    allow_insecure: bool = Field(
        False, description="Serve a non-loopback address without auth. Anyone on the network sees the line."
    )
    tls: HttpTlsConfig | None = Field(None, description="Serve HTTPS with this certificate and key.")
    max_connections: int = Field(
        100, ge=1, le=10000, description="Open connections at most; extra ones are closed at once, unread."
    )
    max_live_clients: int = Field(
        20, ge=1, le=1000, description="Browsers following the live page at most; extra ones get 503."
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            _host, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValueError("write host:port, e.g. 127.0.0.1:9108 (or :9108 for every interface)")
        return v

    @model_validator(mode="after")
    def _network_needs_auth(self) -> HttpConfig:
        if self.listen is None or self.auth is not None or self.allow_insecure:
            return self
        host = self.listen.rpartition(":")[0].strip("[]")
        if not _is_loopback(host):
            raise ValueError(
                f"listen {self.listen!r} is reachable from the network but http.auth is not set; add "
                "auth: {bearer_token_file: ...} or {basic_auth_file: ...}, listen on 127.0.0.1, "
                "or write allow_insecure: true"
            )
        return self


class CfxRequestsConfig(ConfigModel):
    """CFX requests (AreYouThere, WhoIsThere, GetEndpointInformation) taken from the broker, one address per
    handle; responses go to the request's reply-to address. Off when `cfx.requests` is absent."""

    address: str = Field(
        "/queue/{handle}",
        description="AMQP source address each handle takes requests from; {handle} is replaced by the CFX handle "
        "(RabbitMQ 3.x: /queue/<name> declares the queue). Announced as RequestTargetAddress.",
    )

    @field_validator("address")
    @classmethod
    def _one_address_per_handle(cls, v: str) -> str:
        if "{handle}" not in v or any(c in v for c in " #*"):
            raise ValueError("write an address with {handle} in it, e.g. /queue/{handle}")
        return v


class CfxConfig(ConfigModel):
    """The IPC-CFX (IPC-2591) output: every machine becomes a CFX endpoint on an AMQP 1.0 broker."""

    broker: str = Field(description="amqp://host:5672 or amqps://host:5671 of the AMQP 1.0 broker.")
    address: str = Field(
        "/exchange/cfx",
        description="AMQP target address messages are sent to (RabbitMQ 3.x: /exchange/<name>; brokers differ).",
    )
    username: str | None = Field(None, description="SASL user name.")
    password: SecretStr | None = Field(
        None, description="SASL password; prefer password_file or EMSEDGE_CFX__PASSWORD. Never logged."
    )
    password_file: FilePath | None = Field(None, description="File holding the SASL password (first line).")
    tls: TlsConfig | None = Field(None, description="CA, client certificate and key for amqps://.")
    handle_prefix: str | None = Field(
        None, description="CFX handle prefix; a machine's handle is <prefix>.<equipment id>. Default <site>.<line>."
    )
    codec: Literal["json", "gzip"] = Field("json", description="Body encoding, as the CFX SDK allows.")
    heartbeat: Duration = Field(60.0, description="CFX.Heartbeat period per handle; CFX requires at most 5 min.")
    durable: bool = Field(True, description="Mark messages durable (AMQP header), as the SDK does by default.")
    connect_timeout: Duration = Field(10.0, description="Deadline for the TCP/TLS/SASL connect and attach.")
    publish_timeout: Duration = Field(30.0, description="Deadline for the broker's disposition of a batch.")
    window: int = Field(200, ge=1, le=10000, description="Messages sent but not yet settled by the broker.")
    backoff: Backoff = Field(Backoff(initial=0.5, max=30.0), description="Reconnect backoff.")
    requests: CfxRequestsConfig | None = Field(
        None, description="Answer CFX requests addressed to each handle through the broker; off when absent."
    )
    listen: str | None = Field(
        None,
        description="host:port of an AMQP 1.0 listener that answers CFX requests point to point, as the CFX SDK's "
        "endpoints do (a requester connects to amqp://<host>:<port> and sends to the handle); null turns it off. "
        "Anonymous and without TLS, like the SDK's default: prefer a loopback or line-network address.",
    )

    _secret_is_text = field_validator("password_file")(utf8_secret_file)

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(
                f"{redact_url(v)!r} is not an AMQP broker URL; write amqp://host:5672 or amqps://host:5671"
            )
        if parts.password:
            raise ValueError("do not put the password in the URL; use cfx.password_file or EMSEDGE_CFX__PASSWORD")
        return v

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str | None) -> str | None:
        if v is not None:
            host, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) <= 65535 or any(c in host for c in " /@"):
                raise ValueError("write host:port, e.g. 127.0.0.1:5673 (or 0.0.0.0:5673 for every interface)")
        return v

    @field_validator("heartbeat")
    @classmethod
    def _check_heartbeat(cls, v: float) -> float:
        if not 1.0 <= v <= 300.0:
            raise ValueError("CFX requires a heartbeat at least every 5 min; write 1s..5min")
        return v

    @field_validator("handle_prefix")
    @classmethod
    def _check_prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in " /#*")):
            raise ValueError("a CFX handle prefix holds no spaces, '/', '#' or '*'")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> CfxConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def secret(self) -> str | None:
        """The SASL password (the value, or its file's first line); never logged."""
        return read_secret(self.password, self.password_file)


class LoggingConfig(ConfigModel):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: coloured key=value on a terminal, JSON under systemd/Docker."
    )


# ---------------------------------------------------------------------------------------------------
# Root


class Settings(BaseSettings):
    """The whole config. YAML is the base; EMSEDGE_* environment variables override it.

    The validator is built on first use (`defer_build`), not at import: each `equipment` entry is checked
    against the model its adapter registered (`emsedge.adapters.registry`), and the registry is only asked
    once a config is validated or the JSON Schema is rendered. `emsedge.adapters.refresh()` rebuilds it
    after adapters were installed into the running interpreter.
    """

    model_config = SettingsConfigDict(
        env_prefix="EMSEDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
        defer_build=True,
    )

    gateway: GatewayConfig = Field(description="Who this gateway is; the default topic prefix uses it.")
    mqtt: MqttConfig = Field(MqttConfig(), description="The MES broker.")
    buffer: BufferConfig = Field(BufferConfig(), description="The durable local buffer.")
    http: HttpConfig = Field(HttpConfig(), description="Status page, health and metrics endpoint.")
    cfx: CfxConfig | None = Field(None, description="IPC-CFX output over AMQP 1.0 (beside MQTT); off when absent.")
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
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{file}: the secret file is not UTF-8 text (byte at offset {exc.start}) (hint: save it as UTF-8)"]
        ) from None


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
        lines.append(
            f"  {e.id:<16} {e.type:<15} {e.adapter:<7} {address(e):<28} {period(e):<16} {n} signals{extra}"
            f"{state}"
        )
    return "\n".join(lines)


def address(equipment: object) -> str:
    """Where the gateway connects for this machine: an endpoint URL or host:port (unit id for Modbus)."""
    conn = getattr(equipment, "connection", None)
    if (url := getattr(conn, "url", None)) is not None:
        return str(url)
    host, port = getattr(conn, "host", None), getattr(conn, "port", None)
    if host is None:
        folder = getattr(equipment, "path", None)  # a watched folder (result files)
        return str(folder) if folder is not None else "-"
    where = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if (mode := getattr(conn, "mode", None)) is not None:
        where += f" ({mode})"
    if (unit := getattr(conn, "unit_id", None)) is not None:
        where += f" unit {unit}"
    return where


def period(equipment: object) -> str:
    """How often values arrive: the poll period, or the subscription's publishing interval."""
    if getattr(equipment, "mode", None) == "subscribe" and (pub := getattr(equipment, "publishing_interval", None)):
        return f"subscribe {format_duration(pub)}"
    if (poll := getattr(equipment, "poll_interval", None)) is not None:
        return f"poll {format_duration(poll)}"
    return "push"
