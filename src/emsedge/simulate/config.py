"""The virtual line's own config (`config/virtual-line.yaml`): ports, cycle times, fault schedule.

Times are *line* seconds: the virtual line runs on one clock that advances `speed` line seconds per
real second, so a realistic line (25 s placement, 4 min in the oven) can be shown in a demo or a test
without editing every cycle time. The fault schedule uses the same clock.

Like the gateway config this is data: frozen models, `extra="forbid"`, a description on every field.

Ports: the file gives each machine's port; `with_port_base(n)` moves the three servers to n, n+1, n+2
(`emsedge simulate --port-base N`, `emsedge demo --port-base N`) and `with_free_ports()` to ports the OS
picks, so a test or a second demo never collides with a running line. `point_gateway_config()` writes a
gateway config whose equipment (matched by the machines' `id`) connects to wherever this line listens.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emsedge.config import Duration, DurationOrZero
from emsedge.config.types import units_required
from emsedge.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineSettings(_Model):
    speed: float = Field(1.0, gt=0, le=1000, description="Line seconds per real second (1: real time).")
    tick: Duration = Field(0.05, gt=0, description="Real seconds between two steps of the line model.")
    seed: int = Field(2026, description="Random seed: the same seed gives the same boards and defects.")
    serial_prefix: str = Field("PCB-2026-", description="Board serials are prefix + a 6-digit counter.")
    first_serial: int = Field(1, ge=0, description="Counter of the first board.")
    board_interval: Duration = Field(24.0, gt=0, description="A new board arrives at the line this often.")
    input_buffer: int = Field(3, ge=1, description="Boards waiting in front of the pick-and-place at most.")
    max_boards: int | None = Field(None, ge=1, description="Stop loading boards after this many (null: never).")


class Feeder(_Model):
    part_number: str = Field(description="Internal part number of the reel loaded on this slot.")
    ref_designators: list[str] = Field(min_length=1, description="Placements taken from this slot per board.")
    reel_quantity: int = Field(5000, ge=1, description="Components on a full reel; an empty reel is replaced.")


def _default_feeders() -> list[Feeder]:
    def refs(prefix: str, first: int, count: int) -> list[str]:
        return [f"{prefix}{i}" for i in range(first, first + count)]

    return [
        Feeder(part_number="RES-0402-10K", ref_designators=refs("R", 1, 24), reel_quantity=10000),
        Feeder(part_number="RES-0402-4K7", ref_designators=refs("R", 25, 12), reel_quantity=10000),
        Feeder(part_number="CAP-0402-100N", ref_designators=refs("C", 1, 32), reel_quantity=10000),
        Feeder(part_number="CAP-0603-10U", ref_designators=refs("C", 33, 8), reel_quantity=4000),
        Feeder(part_number="IND-0805-2U2", ref_designators=refs("L", 1, 2), reel_quantity=4000),
        Feeder(part_number="DIO-SOD323-BAT54", ref_designators=refs("D", 1, 4), reel_quantity=3000),
        Feeder(part_number="IC-QFN32-MCU", ref_designators=["U1"], reel_quantity=500),
        Feeder(part_number="IC-SOT23-LDO", ref_designators=["U2", "U3"], reel_quantity=3000),
    ]


class PickAndPlaceSettings(_Model):
    host: str = Field("127.0.0.1", description="Listen address of the OPC UA server.")
    port: int = Field(14841, ge=1, le=65535, description="OPC UA port.")
    id: str = Field("pnp-1", description="Machine name, used in logs.")
    program: str = Field("MAIN-CTRL-REV-C", description="Placement program that is loaded.")
    setup_time: DurationOrZero = Field(20.0, description="Time spent in `setup` loading the program at start.")
    transfer_time: DurationOrZero = Field(3.0, description="Board transport in/out of the machine per board.")
    placement_time: Duration = Field(22.0, gt=0, description="Placement time per board.")
    pick_error_rate: float = Field(0.002, ge=0, le=1, description="Chance that a pick fails (retried).")
    nozzles: list[str] = Field(
        default_factory=lambda: ["NZ-1001", "NZ-1002", "NZ-2003", "NZ-2004"],
        description="Nozzle ids on the placement head.",
    )
    feeders: list[Feeder] = Field(default_factory=_default_feeders, description="Feeder slots 1..n.")


class ReflowOvenSettings(_Model):
    host: str = Field("127.0.0.1", description="Listen address of the Modbus TCP server.")
    port: int = Field(15502, ge=1, le=65535, description="Modbus TCP port.")
    id: str = Field("reflow-1", description="Machine name, used in logs.")
    recipe: str = Field("SAC305-STD", description="Thermal profile (recipe) name.")
    dwell_time: Duration = Field(240.0, gt=0, description="Time a board spends in the oven.")
    min_spacing: DurationOrZero = Field(8.0, ge=0, description="Least time between two boards entering.")
    conveyor_speed: float = Field(80.0, gt=0, description="Conveyor speed in cm/min.")
    top_setpoints: list[float] = Field(
        default_factory=lambda: [150.0, 165.0, 175.0, 185.0, 195.0, 210.0, 235.0, 250.0, 245.0, 120.0],
        description="Top heater setpoints of zones 1..10, in Cel.",
    )
    bottom_setpoints: list[float] = Field(
        default_factory=lambda: [145.0, 160.0, 172.0, 182.0, 192.0, 205.0, 230.0, 245.0, 240.0, 110.0],
        description="Bottom heater setpoints of zones 1..10, in Cel.",
    )
    time_constant: Duration = Field(45.0, gt=0, description="Thermal lag of a zone (first order).")
    noise: float = Field(0.3, ge=0, description="Measurement noise (standard deviation) in Cel.")
    board_load: float = Field(1.5, ge=0, description="Temperature dip when a board enters a zone, in Cel.")
    o2_ppm: float = Field(850.0, ge=0, description="Residual oxygen in the nitrogen atmosphere, ppm.")

    @field_validator("top_setpoints", "bottom_setpoints")
    @classmethod
    def _ten_zones(cls, v: list[float]) -> list[float]:
        if len(v) != 10:
            raise ValueError("the virtual oven has 10 zones: give 10 setpoints")
        return v


class AoiSettings(_Model):
    host: str = Field("127.0.0.1", description="Listen address of the HSMS (passive) equipment.")
    port: int = Field(15001, ge=1, le=65535, description="HSMS port.")
    session_id: int = Field(0, ge=0, le=0x7FFF, description="HSMS session (device) id.")
    id: str = Field("aoi-1", description="Machine name, used in logs.")
    program: str = Field("MAIN-CTRL-REV-C-TOP", description="Inspection program.")
    inspection_time: Duration = Field(18.0, gt=0, description="Inspection time per board.")
    defect_rate: float = Field(0.05, ge=0, le=1, description="Chance that a board has defects.")


class IctSettings(_Model):
    enabled: bool = Field(True, description="Test every inspected board (false: the line ends at the AOI).")
    id: str = Field("ict-1", description="Machine name, used in logs.")
    folder: Path = Field(
        Path("./var/ict-1/out"), description="Where the tester writes its i3070 logs (relative: to the working "
        "directory; the demo puts it in its temporary directory)."
    )
    test_time: Duration = Field(30.0, gt=0, description="Test time per board.")
    fail_rate: float = Field(0.03, ge=0, le=1, description="Chance that a board fails a component.")
    retest_rate: float = Field(
        0.5, ge=0, le=1, description="Chance that a failed board is retested at once and passes (a second file)."
    )
    timezone: str = Field("Europe/Berlin", description="The tester PC's clock (local times in the logs).")
    program: str = Field("MAINBOARD", description="Test program.")


Machine = Literal["line", "pick_and_place", "reflow_oven", "aoi"]
FaultKind = Literal["starve", "jam", "pick_errors", "pause", "alarm", "conveyor_stop", "defects", "outage"]

ALLOWED_FAULTS: dict[str, set[str]] = {
    "line": {"starve"},
    "pick_and_place": {"jam", "pick_errors", "pause", "outage"},
    "reflow_oven": {"alarm", "conveyor_stop", "outage"},
    "aoi": {"alarm", "defects", "outage"},
}


class FaultEntry(_Model):
    at: DurationOrZero = Field(description="Line time the fault starts (within each repetition).")
    machine: Machine = Field(description="Where it happens.")
    fault: FaultKind = Field(
        description="starve: no boards arrive; jam: pick-and-place down with an alarm; pick_errors: a burst "
        "of failed picks; pause: operator pause (idle); alarm: an alarm on the oven or AOI; conveyor_stop: "
        "oven conveyor stops (alarm, pick-and-place blocked); defects: every board inspected fails; "
        "outage: the machine's server goes away (the gateway loses and regains the connection)."
    )
    duration: Duration = Field(gt=0, description="How long it lasts.")
    code: int | None = Field(None, ge=0, le=15, description="oven alarm: bit of the alarm word; aoi: ALID.")

    @model_validator(mode="after")
    def _fits_machine(self) -> FaultEntry:
        allowed = ALLOWED_FAULTS[self.machine]
        if self.fault not in allowed:
            raise ValueError(f"{self.machine} cannot have fault {self.fault!r}; allowed: {', '.join(sorted(allowed))}")
        return self


class FaultSchedule(_Model):
    repeat_every: Duration | None = Field(
        None, gt=0, description="Repeat the whole schedule with this period (null: run it once)."
    )
    faults: list[FaultEntry] = Field(default_factory=list, description="Faults, each at a line time.")

    @model_validator(mode="after")
    def _fits_period(self) -> FaultSchedule:
        if self.repeat_every is not None:
            for f in self.faults:
                if f.at + f.duration > self.repeat_every:
                    raise ValueError(f"a {f.fault} at {f.at}s lasting {f.duration}s runs past repeat_every")
        return self


class VirtualLineConfig(_Model):
    line: LineSettings = Field(LineSettings(), description="Clock and board flow.")
    pick_and_place: PickAndPlaceSettings = Field(PickAndPlaceSettings(), description="OPC UA pick-and-place.")
    reflow_oven: ReflowOvenSettings = Field(ReflowOvenSettings(), description="Modbus TCP reflow oven.")
    aoi: AoiSettings = Field(AoiSettings(), description="SECS/GEM (HSMS) AOI.")
    ict: IctSettings = Field(IctSettings(), description="In-circuit tester writing i3070 logs into a folder.")
    schedule: FaultSchedule = Field(FaultSchedule(), description="Faults produced on purpose.")

    def with_ports(self, *, pick_and_place: int, reflow_oven: int, aoi: int) -> VirtualLineConfig:
        """The same line with its three servers on these ports."""
        for port in (pick_and_place, reflow_oven, aoi):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return self.model_copy(update={
            "pick_and_place": self.pick_and_place.model_copy(update={"port": pick_and_place}),
            "reflow_oven": self.reflow_oven.model_copy(update={"port": reflow_oven}),
            "aoi": self.aoi.model_copy(update={"port": aoi}),
        })

    def with_port_base(self, base: int) -> VirtualLineConfig:
        """Pick-and-place on `base`, reflow oven on `base + 1`, AOI on `base + 2`."""
        return self.with_ports(pick_and_place=base, reflow_oven=base + 1, aoi=base + 2)

    def with_free_ports(self) -> VirtualLineConfig:
        """The three servers on loopback ports that are free now (chosen by the OS)."""
        a, b, c = free_ports(3)
        return self.with_ports(pick_and_place=a, reflow_oven=b, aoi=c)

    def gateway_connections(self) -> dict[str, dict[str, Any]]:
        """Per gateway equipment id (the machines' `id`), the connection fields that reach this line."""
        pnp, oven, aoi = self.pick_and_place, self.reflow_oven, self.aoi
        return {
            pnp.id: {"url": f"opc.tcp://{pnp.host}:{pnp.port}/emsedge/pnp"},
            oven.id: {"host": oven.host, "port": oven.port},
            aoi.id: {"host": aoi.host, "port": aoi.port},
        }


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now (all held open until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def point_gateway_config(gateway_file: Path, line: VirtualLineConfig, target: Path) -> dict[str, str]:
    """Write `target`: `gateway_file` with the connection of each line machine pointed at `line`'s ports.

    Only `connection` fields of equipment whose id is a machine id of the line change; the rest of the
    file is copied as it is. Returns the environment the gateway needs to read `target` like the original:
    `EMSEDGE_PROFILES` extended with the profile folders next to `gateway_file`.
    """
    try:
        data = yaml.safe_load(gateway_file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{gateway_file}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{gateway_file}: YAML error: {exc}"]) from None
    connections = line.gateway_connections()
    equipment = data.get("equipment") if isinstance(data, dict) else None
    for entry in equipment if isinstance(equipment, list) else []:
        if isinstance(entry, dict) and entry.get("id") in connections:
            connection = entry.get("connection")
            entry["connection"] = {**(connection if isinstance(connection, dict) else {}), **connections[entry["id"]]}
    target.write_text(f"# {gateway_file} pointed at the virtual line's ports\n" + yaml.safe_dump(data, sort_keys=False),
                      encoding="utf-8")
    here = gateway_file.resolve().parent
    folders = [str(here / "adapters"), str(here.parent / "adapters")]
    if inherited := os.environ.get("EMSEDGE_PROFILES"):
        folders.insert(0, inherited)
    return {"EMSEDGE_PROFILES": os.pathsep.join(folders)}


def load_virtual_line(path: str | Path) -> VirtualLineConfig:
    """Load and validate; a fault becomes a ConfigError naming the file and the field path."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: YAML error: {exc}"]) from None
    try:
        with units_required():
            return VirtualLineConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{file}: {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(problems) from None
