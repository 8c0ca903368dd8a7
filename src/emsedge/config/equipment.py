"""What every equipment entry has in common: `EquipmentBase`, signals, triggers, the event names.

Each adapter subclasses `EquipmentBase` in its own `config.py` (`adapter: Literal["<name>"]`, its
connection, its signals) and registers it in its `AdapterSpec`; `Equipment` validates an entry with the
model its `adapter:` names, so a third-party adapter's fields get the same file:line errors and JSON Schema
as a built-in one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, GetCoreSchemaHandler, WithJsonSchema, field_validator, model_validator
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from emsedge.config.types import Backoff, ConfigModel, Duration, did_you_mean
from emsedge.schema import EMITTABLE_EVENTS, EventType, find_unencodable

EQUIPMENT_ID_MAX = 256
"""Characters in an equipment id (ASCII only): every topic built from it fits an MQTT topic."""

EquipmentType = Literal["pick_and_place", "reflow_oven", "aoi", "spi", "xray", "ict", "fct", "fpt", "other"]

EventFlag = Literal["station_state"]


def _emittable(value: object) -> EventType:
    if isinstance(value, str) and value in EMITTABLE_EVENTS:
        return EventType(value)
    names = [repr(str(e)) for e in EMITTABLE_EVENTS]
    expected = f"{', '.join(names[:-1])} or {names[-1]}"
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


EmittedEvent = Annotated[
    EventType,
    BeforeValidator(_emittable),
    WithJsonSchema({"type": "string", "enum": [str(e) for e in EMITTABLE_EVENTS]}),
]
"""An event type a trigger or a SECS/GEM collection event may emit (`emsedge.schema.EMITTABLE_EVENTS`)."""


PublishMode = Literal["always", "on_change"]


class Deadband(ConfigModel):
    """Changes smaller than this are not reported. Written `0.5` (absolute), `2%` or the long form."""

    type: Literal["absolute", "percent"] = Field(
        description="absolute: in the signal's unit; percent: of the last reported value (an OPC UA server "
        "filtering for us takes percent of the item's EURange)."
    )
    value: float = Field(ge=0, description="Changes smaller than this are not reported.")

    def exceeded(self, last: float, new: float) -> bool:
        """True when `new` differs from the last reported value by more than the deadband."""
        limit = self.value if self.type == "absolute" else abs(last) * self.value / 100
        return abs(new - last) > limit


def _deadband(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("write a deadband such as 0.5 (absolute) or 2% (of the last reported value)")  # noqa: TRY004
    if isinstance(value, int | float):
        return {"type": "absolute", "value": value}
    if isinstance(value, str):
        text = value.strip()
        try:
            return {"type": "percent", "value": float(text[:-1])} if text.endswith("%") else {
                "type": "absolute", "value": float(text)}
        except ValueError:
            raise ValueError("write a deadband such as 0.5 (absolute) or 2% (of the last reported value)") from None
    return value


DeadbandSpec = Annotated[
    Deadband,
    BeforeValidator(_deadband),
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%?\s*$", "examples": ["0.5", "2%"]},
        {"type": "object", "properties": {"type": {"enum": ["absolute", "percent"]}, "value": {"type": "number"}},
         "required": ["type", "value"], "additionalProperties": False},
    ]}),
]
"""A deadband: `0.5` (absolute), `2%` (of the last reported value) or `{type: absolute, value: 0.5}`."""


class Precision(ConfigModel):
    """How many digits of a float reach MES (float32 registers carry noise digits: 247.0500030517578)."""

    decimals: int | None = Field(None, ge=0, le=15, description="Round to this many decimal places.")
    significant: int | None = Field(None, ge=1, le=17, description="Round to this many significant digits.")

    @model_validator(mode="after")
    def _one(self) -> Precision:
        if (self.decimals is None) == (self.significant is None):
            raise ValueError("give either decimals or significant digits")
        return self

    def apply(self, value: float) -> float:
        if self.decimals is not None:
            return round(value, self.decimals)
        if value == 0 or not math.isfinite(value):
            return value
        return float(f"{value:.{self.significant}g}")


_SIGNIFICANT = re.compile(r"^\s*(\d+)\s*(?:sig|significant|significant digits)\s*$")


def _precision(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("write decimal places (2) or significant digits (4 significant)")  # noqa: TRY004
    if isinstance(value, int):
        return {"decimals": value}
    if isinstance(value, str):
        if value.strip().isdigit():
            return {"decimals": int(value)}
        if m := _SIGNIFICANT.match(value):
            return {"significant": int(m.group(1))}
        raise ValueError("write decimal places (2) or significant digits (4 significant)")
    return value


PrecisionSpec = Annotated[
    Precision,
    BeforeValidator(_precision),
    WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 15, "description": "decimal places"},
        {"type": "string", "pattern": r"^\s*\d+\s*(sig|significant|significant digits)\s*$",
         "examples": ["4 significant"]},
        {"type": "object", "properties": {"decimals": {"type": "integer"}, "significant": {"type": "integer"}},
         "additionalProperties": False},
    ]}),
]
"""Float precision: `2` (decimal places), `4 significant` or `{significant: 4}`."""


class SignalCommon(ConfigModel):
    """Fields every adapter's signal model has (its address fields come from the adapter)."""

    name: str = Field(description="Signal name in payloads (snake_case).")
    unit: str | None = Field(None, description="Unit of the value, e.g. Cel, kPa, cm/min, ppm.")
    event: EventFlag | None = Field(
        None, description="station_state: changes become station_state_changed events, not telemetry."
    )
    map: dict[int | str, int] | None = Field(
        None, description="With event: station_state, the machine's value -> SEMI E58 state code."
    )
    publish: PublishMode | None = Field(
        None, description="always: every reading; on_change: only changes (beyond `deadband`) and snapshots. "
        "Default: the equipment's `publish`."
    )
    deadband: DeadbandSpec | None = Field(
        None, description="With publish: on_change, smaller changes are not reported. Default: the equipment's."
    )
    precision: PrecisionSpec | None = Field(
        None, description="Rounding of float values: decimal places (2) or `4 significant`. Default: the equipment's."
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


class Trigger(ConfigModel):
    on_change: str = Field(description="Signal whose change fires the trigger.")
    emit: EmittedEvent = Field(description="Event type emitted.")
    serial: str | None = Field(None, description="Signal holding the board serial, copied to event.serial.")
    include: list[str] = Field(default_factory=list, description="Signals snapshotted into the event.")
    fields: dict[str, Any] = Field(default_factory=dict, description="Constant fields added to the event.")

    @field_validator("fields")
    @classmethod
    def _encodable(cls, v: dict[str, Any]) -> dict[str, Any]:
        found = find_unencodable(v)
        if found is not None:
            path, reason, _ = found
            raise ValueError(f"{path}: {reason} (hint: JSON on the wire holds 64-bit integers; write it as text)")
        return v
    skip_initial: bool = Field(
        True,
        description="Do not fire on the first value seen after the gateway starts (the last good value is "
        "kept across reconnects, so a change during an outage fires once when the link returns).",
    )
    counter: str | None = Field(
        None,
        description="Board counter signal that counts the same boards (e.g. board_exit_count): when it moves "
        "by more than the events fired, a units_missed event says how many boards passed unseen.",
    )


class EquipmentBase(ConfigModel):
    """Base of every adapter's equipment model. A subclass narrows `adapter` to `Literal["<its name>"]`."""

    id: str = Field(description="Equipment id, part of the topics; unique in the config.")
    type: EquipmentType = Field(description="Kind of machine.")
    adapter: str = Field(description="Adapter that talks to this machine (a registered adapter name).")
    enabled: bool = Field(True, description="false keeps the entry but does not connect.")
    profile: str | None = Field(None, description="Equipment profile merged under this entry.")
    triggers: list[Trigger] = Field(default_factory=list, description="Events fired by signal changes.")
    backoff: Backoff = Field(Backoff(initial=0.5, max=30.0), description="Reconnect backoff.")
    probe_interval: Duration | None = Field(
        1.0,
        description=(
            "While the machine's TCP port refuses connections, check it this often (a TCP connect only, "
            "0.5-1.5x jitter) and reconnect as soon as it accepts instead of waiting out the backoff; "
            "null: wait out the backoff. Applies to adapters that connect to a host:port (modbus, opcua, "
            "hsms active)."
        ),
    )
    publish: PublishMode = Field(
        "always",
        description="always: every reading goes to MES; on_change: a reading goes only when its value changed "
        "(beyond `deadband`) or its quality changed, plus every signal's value each `snapshot_interval`.",
    )
    deadband: DeadbandSpec | None = Field(
        None, description="Default deadband of the signals with publish: on_change (none: any change counts)."
    )
    snapshot_interval: Duration = Field(
        60.0, description="With publish: on_change, every signal's latest value is sent this often (and at "
        "start), so a late subscriber and a restarted gateway see every value."
    )
    precision: PrecisionSpec | None = Field(None, description="Default float precision of the signals.")
    cfx_handle: str | None = Field(
        None, description="CFX handle of this machine (cfx output); default <cfx.handle_prefix>.<id>."
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", v):
            raise ValueError("an equipment id holds letters, digits, _ . - (it is part of MQTT topics)")
        if len(v) > EQUIPMENT_ID_MAX:
            raise ValueError(
                f"is {len(v):,} characters long; at most {EQUIPMENT_ID_MAX} (hint: it is part of every topic of "
                "this machine, and an MQTT topic holds at most 65,535 bytes)"
            )
        return v

    def configured_signals(self) -> list[SignalCommon]:
        """The signals this equipment reads; an adapter whose signals are not in `signals` overrides this."""
        return list(getattr(self, "signals", []))

    def signal_names(self) -> list[str]:
        return [s.name for s in self.configured_signals()]

    @model_validator(mode="after")
    def _triggers_name_signals(self) -> EquipmentBase:
        known = set(self.signal_names())
        if not known:
            return self
        for i, trig in enumerate(self.triggers):
            for ref in [trig.on_change, trig.serial, trig.counter, *trig.include]:
                if ref is not None and ref not in known:
                    raise ValueError(
                        f"triggers[{i}] names signal {ref!r}, which is not configured{did_you_mean(ref, known)}"
                    )
        if len(known) == len(names := self.signal_names()):
            return self
        dupes = {n for n, count in Counter(names).items() if count > 1}
        if dupes:
            raise ValueError(f"signal names must be unique; repeated: {', '.join(sorted(dupes))}")
        return self


def adapter_tag(value: Any) -> str | None:
    """The `adapter:` of an entry (a mapping while validating, a model when serialising)."""
    adapter = value.get("adapter") if isinstance(value, dict) else getattr(value, "adapter", None)
    return None if adapter is None else str(adapter)


class _RegisteredModel:
    """Validates an equipment entry with the `config_model` of the adapter its `adapter:` names.

    The choices come from the adapter registry when `Settings` is built (on first use), so built-in and
    third-party adapters are assembled the same way. An unknown name fails, and
    the loader turns into "unknown adapter 'x'; did you mean ...". (pydantic-core reports it with the
    custom error type `adapter_missing`, like a missing `adapter:`.)
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from emsedge.adapters import registry  # noqa: PLC0415 - the registry imports adapter config models

        choices: dict[str, CoreSchema] = {
            name: handler.generate_schema(spec.config_model) for name, spec in registry().specs.items()
        }
        if not choices:  # nothing registered (emsedge itself not installed): every entry is refused
            return core_schema.no_info_plain_validator_function(_no_adapter)
        return core_schema.tagged_union_schema(
            choices,
            discriminator=adapter_tag,
            custom_error_type="adapter_missing",
            custom_error_message="required field 'adapter' is missing",
        )


def _no_adapter(value: object) -> EquipmentBase:
    raise PydanticCustomError("adapter_missing", "required field 'adapter' is missing")


Equipment = Annotated[EquipmentBase, _RegisteredModel()]
"""One equipment entry, validated by its adapter's model (a subclass of `EquipmentBase`)."""


__all__ = [
    "Deadband",
    "DeadbandSpec",
    "EmittedEvent",
    "Equipment",
    "EquipmentBase",
    "EquipmentType",
    "EventFlag",
    "Precision",
    "PrecisionSpec",
    "PublishMode",
    "SignalCommon",
    "Trigger",
    "adapter_tag",
]
