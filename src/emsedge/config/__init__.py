"""The YAML config: pydantic models and the loader that reports `file:line:col: field.path: problem`.

* `types`: Duration, Size, Backoff, the frozen model base.
* `core`: gateway, MQTT, buffer, HTTP, logging, and the root `Settings`.
* `equipment`: `EquipmentBase` (every adapter's model subclasses it), signals, triggers, event names.
* `loader`: YAML, equipment profiles, environment overrides, located errors.

Adapter-specific models live with their adapter (`emsedge/adapters/<name>/config.py`) and are found
through the adapter registry (`emsedge.adapters`), built-in and third-party alike.
"""

from __future__ import annotations

from emsedge.config.core import (
    BufferConfig,
    CfxConfig,
    CfxRequestsConfig,
    GatewayConfig,
    HttpAuthConfig,
    HttpConfig,
    HttpTlsConfig,
    LoggingConfig,
    MqttConfig,
    Settings,
    TlsConfig,
    read_secret,
    summary,
)
from emsedge.config.equipment import (
    Deadband,
    DeadbandSpec,
    EmittedEvent,
    Equipment,
    EquipmentBase,
    EquipmentType,
    EventFlag,
    Precision,
    PrecisionSpec,
    PublishMode,
    SignalCommon,
    Trigger,
)
from emsedge.config.loader import Position, load_config, profile_search_path
from emsedge.config.types import (
    Backoff,
    ConfigModel,
    Duration,
    DurationOrZero,
    Host,
    Size,
    did_you_mean,
    parse_duration,
)
from emsedge.errors import ConfigError

__all__ = [
    "Backoff",
    "BufferConfig",
    "CfxConfig",
    "CfxRequestsConfig",
    "ConfigError",
    "ConfigModel",
    "Deadband",
    "DeadbandSpec",
    "Duration",
    "DurationOrZero",
    "EmittedEvent",
    "Equipment",
    "EquipmentBase",
    "EquipmentType",
    "EventFlag",
    "GatewayConfig",
    "Host",
    "HttpAuthConfig",
    "HttpConfig",
    "HttpTlsConfig",
    "LoggingConfig",
    "MqttConfig",
    "Position",
    "Precision",
    "PrecisionSpec",
    "PublishMode",
    "Settings",
    "SignalCommon",
    "Size",
    "TlsConfig",
    "Trigger",
    "did_you_mean",
    "load_config",
    "parse_duration",
    "profile_search_path",
    "read_secret",
    "summary",
]
