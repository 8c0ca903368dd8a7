"""Every built-in result parser, fed anything, returns boards or raises ParseError: never another exception.

Three kinds of input: random bytes, text over each format's significant characters (to reach deep into
the structure), and the golden files with random cuts, insertions and duplicated lines (the realistic
damage: truncated copies, line noise, a tester that wrote a line twice).
"""

from __future__ import annotations

import os
from datetime import UTC
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.adapters.result_files.model import RESULTS, SourceFile, event_fields
from emsedge.adapters.result_files.parsers import ParseError, ParseOptions, parser_for

GOLDEN = Path(__file__).parent.parent / "golden" / "result_files"
CASES = {
    "i3070": "i3070_panel_one_failing",
    "gr228x": "gr228x_si_suffixes_and_abort",
    "spea": "spea_anl_records",
    "takaya_atd": "takaya_atd_two_groups",
    "delimited": "fct_csv_cp1252",
}
ALPHABETS = {
    "i3070": "{}@|\\\n0123456789+-.E BATCHBTESTBLOCKA-RESLIM23TSPF%",
    "gr228x": "@SN\n0123456789-JANMAR:=<>#%(),.+EKMEGUNP\"/?*&!][ RCPV",
    "spea": "FORMAT;STARTANLSNEND\n0123456789/:.e+-PASFILmd",
    "takaya_atd": "@*PASFIL GROUPNo.Serial:\t\n0123456789ModelDATETestimeID%+-.E_()Parts Judgement",
    "delimited": ";\"\n0123456789,.-PASFILkmµΩVA :Serial numberTest",
}


def _options(fmt: str) -> ParseOptions:
    raw = yaml.safe_load((GOLDEN / CASES[fmt] / "config.yaml").read_text(encoding="utf-8"))
    raw["path"] = "/nonexistent"
    return ResultFilesEquipment.model_validate(raw).parse_options()


OPTIONS = {fmt: _options(fmt) for fmt in CASES}
INPUTS = {fmt: next(p for p in (GOLDEN / case).iterdir() if p.name.startswith("input")).read_bytes()
          for fmt, case in CASES.items()}


def _check(fmt: str, data: bytes) -> None:
    try:
        boards = parser_for(fmt)(data, OPTIONS[fmt])
    except ParseError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert error.reason
        assert error.line is None or error.line >= 1
        return
    assert boards
    for i, board in enumerate(boards):
        assert board.serial and board.result in RESULTS
        event_fields(board, SourceFile("f", "0" * 64, len(data)), i, UTC)  # the event can always be built


@st.composite
def damaged(draw: st.DrawFn, fmt: str) -> bytes:
    data = bytearray(INPUTS[fmt])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "insert", "truncate", "duplicate_line", "flip"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate_line":
            end = data.find(b"\n", at)
            start = data.rfind(b"\n", 0, at) + 1
            if end > start:
                data[end + 1:end + 1] = data[start:end + 1]
        elif data:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


EXAMPLES = int(os.environ.get("EMSEDGE_FUZZ_EXAMPLES", "150"))  # raise it for a longer local run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(fmt=st.sampled_from(sorted(CASES)), data=st.binary(max_size=2048))
def test_parsers_survive_random_bytes(fmt: str, data: bytes) -> None:
    _check(fmt, data)


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(CASES)))
def test_parsers_survive_text_made_of_their_own_syntax(data: st.DataObject, fmt: str) -> None:
    text = data.draw(st.text(alphabet=ALPHABETS[fmt], max_size=600))
    _check(fmt, text.encode(OPTIONS[fmt].encoding, errors="replace"))


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(CASES)))
def test_parsers_survive_damaged_real_files(data: st.DataObject, fmt: str) -> None:
    _check(fmt, data.draw(damaged(fmt)))


def test_undamaged_golden_files_parse() -> None:
    for fmt in CASES:
        assert parser_for(fmt)(INPUTS[fmt], OPTIONS[fmt])
