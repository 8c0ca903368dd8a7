"""Every equipment profile in adapters/ and every config in config/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emsedge.config import load_config
from emsedge.errors import ConfigError
from emsedge.simulate import load_virtual_line

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "adapters").glob("*/*.yaml"))
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
FOLDER_TYPES = {"reflow": "reflow_oven"}
"""Profile folders are named after the equipment type, shortened where the type name is long."""


def _config_using(tmp_path: Path, profile: str, **overrides: object) -> Path:
    entry = {"id": "machine-1", "profile": profile, **overrides}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"id": "gw", "site": "s", "line": "l"}, "equipment": [entry]}))
    return path


def test_there_are_profiles_for_every_virtual_machine_and_the_generic_starting_points() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in PROFILES}
    assert {
        "pick_and_place/virtual-pnp", "reflow/virtual-reflow", "aoi/virtual-aoi", "reflow/generic-10-zone",
        "pick_and_place/generic-opcua", "aoi/generic-gem", "ict/generic-gem",
    } <= names


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_profile_loads_and_validates_through_the_config_loader(tmp_path: Path, profile: Path) -> None:
    data = yaml.safe_load(profile.read_text())
    assert "id" not in data, "a profile describes a model, not one machine: no id"
    assert data.get("description"), "say what the profile is for"
    name = f"{profile.parent.name}/{profile.stem}"
    settings = load_config(_config_using(tmp_path, name), environ={"EMSEDGE_PROFILES": str(REPO / "adapters")})
    (equipment,) = settings.equipment
    assert equipment.id == "machine-1"
    assert equipment.type == FOLDER_TYPES.get(profile.parent.name, profile.parent.name)
    assert equipment.signal_names(), "a profile maps at least one signal"
    for trigger in equipment.triggers:  # the loader checked that they name configured signals
        assert trigger.on_change in equipment.signal_names()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_in_the_config_folder_loads(config: Path) -> None:
    if config.name == "virtual-line.yaml":
        line = load_virtual_line(config)
        assert line.schedule.faults
    else:
        assert load_config(config).equipment


def test_an_entry_overrides_connection_and_single_signals_of_a_profile(tmp_path: Path) -> None:
    path = _config_using(
        tmp_path,
        "reflow/generic-10-zone",
        connection={"host": "10.0.4.11"},
        signals=[{"name": "board_exit_serial", "address": 200, "length": 10},
                 {"name": "boards_in_oven", "remove": True}],
    )
    settings = load_config(path)
    (reflow,) = settings.equipment
    assert reflow.connection.host == "10.0.4.11"
    assert reflow.connection.port == 502  # kept from the profile  # type: ignore[union-attr]
    signals = {s.name: s for s in reflow.signals}  # type: ignore[union-attr]
    assert signals["board_exit_serial"].address == 200
    assert signals["board_exit_serial"].length == 10
    assert signals["board_exit_serial"].table == "input"  # kept from the profile
    assert "boards_in_oven" not in signals
    profile = yaml.safe_load((REPO / "adapters/reflow/generic-10-zone.yaml").read_text())
    assert len(signals) == len(profile["signals"]) - 1


def test_removing_a_signal_a_trigger_still_uses_is_refused_with_its_name(tmp_path: Path) -> None:
    path = _config_using(tmp_path, "reflow/generic-10-zone", signals=[{"name": "o2_ppm", "remove": True}])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "names signal 'o2_ppm', which is not configured" in str(info.value)


def test_a_profile_error_names_the_users_entry_the_signal_and_the_profile_file(tmp_path: Path) -> None:
    profiles = tmp_path / "adapters" / "reflow"
    profiles.mkdir(parents=True)
    (profiles / "broken.yaml").write_text(
        "description: broken\ntype: reflow_oven\nadapter: modbus\nconnection: {host: h}\n"
        "signals:\n  - {name: t, table: holding, address: 0, type: float23}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(_config_using(tmp_path, "reflow/broken"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'gateway.yaml'}:")  # the user's file, at the entry's profile: line
    assert "signals[t].type" in message  # the signal by name: its index in the merged list means nothing
    assert "from profile reflow/broken at broken.yaml:6:" in message


def test_a_bad_virtual_line_config_exits_78_naming_the_field(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from emsedge.simulate import main_simulate  # noqa: PLC0415

    bad = tmp_path / "line.yaml"
    bad.write_text("line: {sped: 2}\nschedule: {faults: [{at: 1s, machine: aoi, fault: jam, duration: 1s}]}\n")
    assert main_simulate(["-c", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "line.sped" in err
    assert "aoi cannot have fault 'jam'" in err
