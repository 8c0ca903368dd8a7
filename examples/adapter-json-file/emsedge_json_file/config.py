"""Config model of the `json_file` adapter: which file, how often, which values."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from emsedge.config import Duration, EquipmentBase, SignalCommon


class JsonFileSignal(SignalCommon):
    key: str | None = Field(
        None, description="Key of the value in the file; dots walk into nested objects. Default: the signal name."
    )

    @property
    def path(self) -> list[str]:
        return (self.key or self.name).split(".")


class JsonFileEquipment(EquipmentBase):
    adapter: Literal["json_file"] = Field(description="Values from a JSON file, read every poll_interval.")
    path: Path = Field(description="The JSON file: one object of values, e.g. {\"oven_temp\": 245.1}.")
    poll_interval: Duration = Field(1.0, description="How often the file is read; kept without drift.")
    timeout: Duration = Field(2.0, description="Deadline for reading the file (it may sit on a network share).")
    signals: list[JsonFileSignal] = Field(min_length=1, description="Values taken from the file.")
