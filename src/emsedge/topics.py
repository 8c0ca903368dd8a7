"""Topic names from config. The prefix is validated (no wildcards); ids are validated by the config."""

from __future__ import annotations

from dataclasses import dataclass

from emsedge.schema import GATEWAY_EQUIPMENT, Record


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str

    def telemetry(self, equipment: str) -> str:
        return f"{self.prefix}/{equipment}/telemetry"

    def events(self, equipment: str) -> str:
        return f"{self.prefix}/{equipment}/events"

    def state(self, equipment: str) -> str:
        """Retained current state of one machine (emsedge.state)."""
        return f"{self.prefix}/{equipment}/state"

    def meta(self, equipment: str) -> str:
        """Retained meta of one machine's compact telemetry (`mqtt.telemetry_format: compact`)."""
        return f"{self.prefix}/{equipment}/meta"

    @property
    def status(self) -> str:
        return f"{self.prefix}/{GATEWAY_EQUIPMENT}/status"

    def for_record(self, record: Record) -> str:
        return self.telemetry(record.equipment) if record.kind == "telemetry" else self.events(record.equipment)
