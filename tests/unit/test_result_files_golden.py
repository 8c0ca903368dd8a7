"""Golden cases of the result_files adapter: tests/golden/result_files/<case>/ holds the tester's file
(`input.*`), the equipment config (`config.yaml`) and the events expected from it (`expected.json`).

Each case runs the real adapter (scanner, parser, ledger, moves) over a folder holding only that file.
Regenerate after a deliberate change with EMSEDGE_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.result_files.adapter import ResultFilesAdapter
from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.schema import FileRejectedEvent, Record, UnitTestedEvent

GOLDEN = Path(__file__).parent.parent / "golden" / "result_files"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def _events(records: Sequence[Record]) -> list[dict[str, Any]]:
    # a rejection happens when the gateway reads the file: its time is not part of the golden output
    return [
        {"ts": r.ts if r.event_type == "unit_tested" else "<time of rejection>", "event": r.body["event"]}
        for r in records
        if r.event_type in ("unit_tested", "file_rejected")
    ]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.asyncio
async def test_golden_case_emits_exactly_the_expected_events(case: str, tmp_path: Path) -> None:
    folder = GOLDEN / case
    inputs = [p for p in folder.iterdir() if p.name.startswith("input")]
    assert len(inputs) == 1, f"{case}: one input file expected"
    raw = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    (tmp_path / "in").mkdir()
    shutil.copy(inputs[0], tmp_path / "in" / inputs[0].name)
    raw.update(path=tmp_path / "in", archive=tmp_path / "done", error=tmp_path / "error", settle=0)
    config = ResultFilesEquipment.model_validate(raw)
    emitted: list[Record] = []

    async def emit(records: Sequence[Record]) -> None:
        emitted.extend(records)

    adapter = ResultFilesAdapter(config, AdapterContext(equipment=config, emit=emit), ledger_path=tmp_path / "l.db")
    async with adapter:
        assert await adapter.scan_once() == 1
    got = _events(emitted)

    expected_file = folder / "expected.json"
    if os.environ.get("EMSEDGE_UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    assert got == expected
    for record in emitted:  # every event matches its documented wire model (docs/mqtt-contract.md)
        event_body = record.body["event"]
        (UnitTestedEvent if event_body["type"] == "unit_tested" else FileRejectedEvent).model_validate(event_body)

    rejected = [e for e in got if e["event"]["type"] == "file_rejected"]
    if rejected:
        assert (tmp_path / "error" / inputs[0].name).exists()
        reason = (tmp_path / "error" / f"{inputs[0].name}.reason.txt").read_text(encoding="utf-8")
        assert rejected[0]["event"]["reason"] in reason
    else:
        assert (tmp_path / "done" / inputs[0].name).read_bytes() == inputs[0].read_bytes()
    assert not (tmp_path / "in" / inputs[0].name).exists()
