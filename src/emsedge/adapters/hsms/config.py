"""Config model of the SECS/GEM (HSMS) adapter: the link and its timers, status variables, reports,
collection events and alarms."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from emsedge.config import ConfigModel, Duration, DurationOrZero, EmittedEvent, EquipmentBase, Host, SignalCommon, Size


class HsmsConnection(ConfigModel):
    host: Host = Field("127.0.0.1", description="Equipment host (active) or listen address (passive).")
    port: int = Field(5000, ge=1, le=65535, description="TCP port.")
    session_id: int = Field(0, ge=0, le=0x7FFF, description="HSMS session (device) id.")
    mode: Literal["active", "passive"] = Field("active", description="active: the gateway connects.")
    t3: Duration = Field(45.0, description="Reply timeout.")
    t5: Duration = Field(10.0, description="Connect separation timeout (minimum delay between connects).")
    t6: Duration = Field(5.0, description="Control transaction timeout.")
    t7: Duration = Field(10.0, description="Not-selected timeout.")
    t8: Duration = Field(5.0, description="Inter-character timeout within one message.")
    linktest_interval: DurationOrZero = Field(30.0, description="Linktest period; 0 disables.")
    max_message_bytes: Size = Field(
        Size(4 << 20),
        description="Longest message body accepted; longer ones are skipped and answered S9F11. 4 MiB: the "
        "messages a host receives (event reports, alarms, replies) are far smaller, and the bound caps the memory "
        "and decode time one message can cost.",
    )


class StatusVariable(SignalCommon):
    svid: int = Field(ge=0, description="Status variable id.")


class ReportDefinition(ConfigModel):
    rptid: int = Field(ge=0, description="Report id defined by the host.")
    vids: list[int] = Field(min_length=1, description="Variable ids in the report.")
    names: list[str] | None = Field(None, description="Names of the values, in vids order.")

    @model_validator(mode="after")
    def _names_match(self) -> ReportDefinition:
        if self.names is not None and len(self.names) != len(self.vids):
            raise ValueError(f"`names` has {len(self.names)} entries but `vids` has {len(self.vids)}")
        return self


_DEFAULT_PASS_VALUES: tuple[str | int | bool, ...] = ("PASS", "pass", "OK", "ok", "GOOD", 1, True)


class CollectionEvent(ConfigModel):
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


class AlarmConfig(ConfigModel):
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
