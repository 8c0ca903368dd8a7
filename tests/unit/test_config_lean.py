"""The config loader's memory savings change nothing a config means: same data, same errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emsedge.adapters.modbus.config import ModbusSignal
from emsedge.config import loader
from emsedge.errors import ConfigError

DOCUMENTS = [
    "a: 1\nb: [1, 2.5, true, null, ~, 'x', \"y\", 2001-12-14, 0x1F, 1e3, .inf]\nc: {d: e}\n",
    "x: &a {p: 1}\ny: *a\nz: [*a, *a]\n",
    "base: &b {p: 1, q: 2}\nx:\n  <<: *b\n  q: 3\n",
    "",
    "# only a comment\n",
    "- 1\n- 2\n",
    "k: !!str 123\nl: !!float 1\nm: |\n  block\n  text\n",
    "s: !!set {a, b}\n",
    "= : 1\n",
    "bin: !!binary aGVsbG8=\n",
    "equipment:\n  - id: oven-1\n    signals:\n      - {name: t1, unit: Cel}\n      - {name: t2, unit: Cel}\n",
]

BROKEN = [
    "1: a\n'1': b\n",
    "---\na: 1\n---\nb: 2\n",
    "a: 1\nb: 2\na: 3\n",
    "? [a, b]\n: c\n",
    "a: *nope\n",
    "t: !custom 1\n",
    "a: [1, 2\n",
]


def _full_loader(text: str) -> Any:
    full = loader._YamlLoader(text)
    try:
        return full.get_single_data()
    finally:
        full.dispose()


@pytest.mark.parametrize("text", DOCUMENTS)
def test_streamed_yaml_is_the_data_the_full_loader_builds(text: str, tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(text)
    assert loader._load_yaml(file)[0] == _full_loader(text)


@pytest.mark.parametrize("text", BROKEN)
def test_streamed_yaml_refuses_what_the_full_loader_refuses(text: str, tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the reference raises several yaml error types
        _full_loader(text)
    with pytest.raises(ConfigError):
        loader._load_yaml(file)


def test_a_duplicate_key_is_located_by_the_streamed_loader(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("gateway:\n  id: a\n  id: b\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3:3: duplicate key 'id' \(first written at line 2"):
        loader._load_yaml(file)


def test_models_given_the_same_fields_share_one_fields_set_and_stay_frozen() -> None:
    a = ModbusSignal.model_validate({"name": "a", "table": "holding", "address": 1, "type": "uint16"})
    b = ModbusSignal.model_validate({"name": "b", "table": "input", "address": 2, "type": "float32"})
    c = ModbusSignal.model_validate({"name": "c", "table": "input", "address": 2, "type": "float32", "unit": "V"})
    assert a.model_fields_set is b.model_fields_set
    assert c.model_fields_set == {"name", "table", "address", "type", "unit"}
    copied = a.model_copy(update={"unit": "Cel"})
    assert "unit" in copied.model_fields_set and "unit" not in b.model_fields_set
    assert a.model_dump(exclude_unset=True) == {"name": "a", "table": "holding", "address": 1, "type": "uint16"}
