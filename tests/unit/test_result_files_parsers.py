"""Result-file parsers, SI values, config validation and the parser registry (pure unit tests)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from emsedge.adapters.result_files import parsers
from emsedge.adapters.result_files.config import ResultFilesEquipment
from emsedge.adapters.result_files.model import TestedBoard, to_utc
from emsedge.adapters.result_files.parsers import ParseError, ParseOptions, parser_for
from emsedge.adapters.result_files.units import ValueFormatError, quantity, spice_value, unit_symbol

GOLDEN = Path(__file__).parent.parent / "golden" / "result_files"


@pytest.mark.parametrize(
    ("text", "value"),
    [("100.2K", 100_200.0), ("4.7U", 4.7e-6), ("1MEG", 1e6), ("1meg", 1e6), ("52M", 0.052), ("10.2N", 1.02e-8),
     ("22P", 2.2e-11), ("+4.548068E-05", 4.548068e-05), ("-500M", -0.5), ("3", 3.0), (".5K", 500.0)],
)
def test_spice_suffixes_become_base_unit_numbers(text: str, value: float) -> None:
    assert spice_value(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["", "K", "1.2.3", "12X", "1e999", "nan"])
def test_what_is_not_a_spice_number_is_refused(text: str) -> None:
    with pytest.raises(ValueFormatError):
        spice_value(text)


@pytest.mark.parametrize(
    ("text", "unit", "value", "symbol"),
    [("4.7kΩ", None, 4700.0, "Ohm"), ("4.7", "kΩ", 4700.0, "Ohm"), ("1.5", "MΩ", 1.5e6, "Ohm"),
     ("99.8", "m\u2126", 0.0998, "Ohm"), ("10", "µA", 1e-5, "A"), ("10", "\u03bcA", 1e-5, "A"), ("10", "uA", 1e-5, "A"),
     ("100 nF", None, 1e-7, "F"), ("3.3", "V", 3.3, "V"), ("12", "mV", 0.012, "V"), ("50", "Hz", 50.0, "Hz"),
     ("2", "ms", 0.002, "s"), ("25", "°C", 25.0, "Cel"), ("7", "counts", 7.0, "counts"), ("4.7U", None, 4.7e-6, None)],
)
def test_unit_style_quantities_convert_prefix_and_unit(text: str, unit: str | None, value: float, symbol: str) -> None:
    got_value, got_symbol = quantity(text, unit)
    assert got_value == pytest.approx(value, rel=1e-12)
    assert got_symbol == symbol


def test_ohm_spellings_all_read_as_ohm() -> None:
    assert {unit_symbol(u) for u in ("Ω", "\u2126", "ohm", "OHM", "Ohms", "O")} == {"Ohm"}


def _parse(fmt: str, text: str, **options: object) -> list[TestedBoard]:
    return parser_for(fmt)(text.encode(), ParseOptions(**options))  # type: ignore[arg-type]


def test_i3070_panel_yields_one_board_per_batch_with_its_failures() -> None:
    data = (GOLDEN / "i3070_panel_one_failing" / "input.log").read_bytes()
    boards = parser_for("i3070")(data, ParseOptions())
    assert [(b.serial, b.result, b.board_number, b.panel_serial) for b in boards] == [
        ("PCB-2026-000201", "fail", 1, "PANEL-2026-0042"),
        ("PCB-2026-000202", "pass", 2, "PANEL-2026-0042"),
    ]
    assert boards[0].failed_tests == ["1%r101"]
    r101 = next(t for t in boards[0].tests if t.name == "1%r101").measurements[0]
    assert (r101.value, r101.unit, r101.low, r101.high, r101.result) == (11822.0, "Ohm", 9500.0, 10500.0, "fail")
    c12 = next(t for t in boards[1].tests if t.name == "2%c12").measurements[0]
    assert (c12.nominal, c12.high, c12.low, c12.unit) == (1e-7, 1.2e-7, 8e-8, "F")
    assert boards[0].program == "PWR-CTRL-T" and boards[0].operator == "op17" and boards[0].tester == "i3070-ICT3"


@pytest.mark.parametrize(("status", "result"), [("00", "pass"), ("06", "fail"), ("80", "error"), ("81", "aborted"),
                                                ("13", "aborted")])
def test_i3070_board_status_codes_map_to_verdicts(status: str, result: str) -> None:
    text = f"{{@BTEST|SN1|{status}|260101120000|000010|0|all||n|n|||001|\n}}\n"
    board = _parse("i3070", text)[0]
    assert (board.result, board.raw_result) == (result, status)
    assert board.ended is not None and (board.ended - board.started).total_seconds() == 10  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("{@BATCH|a\n{@BTEST|SN|00|260101120000|1|0|all||n|n|||1|\n}\n", 1, "never closed"),
        ("{@BTEST|SN|00|260101120000|1|0|all||n|n|||1|\n}}\n", 2, "without an open record"),
        ("{@BTEST||00|260101120000|1|0|all||n|n|||1|\n}\n", 1, "without a board id"),
        ("{@BTEST|SN|xx|260101120000|1|0|all||n|n|||1|\n}\n", 1, "not a number"),
        ("{@BTEST|SN|00|2601011200|1|0|all||n|n|||1|\n}\n", 1, "YYMMDDhhmmss"),
        ("{@BTEST|SN|00|260101120000|1|0|all||n|n|||1|\n{@BLOCK|r1|00\n{@A-RES|0|abc}\n}\n}\n", 3, "not a number"),
        ("hello\n", 1, "outside any record"),
        ("{@RPT|only a report}\n", None, "not an i3070 log"),
    ],
)
def test_i3070_faults_name_the_line(text: str, line: int | None, words: str) -> None:
    with pytest.raises(ParseError) as info:
        _parse("i3070", text)
    assert info.value.line == line and words in info.value.reason


def test_gr228x_reads_si_values_limits_and_end_markers() -> None:
    boards = parser_for("gr228x")((GOLDEN / "gr228x_si_suffixes_and_abort" / "input.LOG").read_bytes(), ParseOptions())
    assert [(b.serial, b.result, b.raw_result) for b in boards] == [
        ("MD-26-0001", "aborted", "?"), ("MD-26-0002", "fail", "/"), ("MD-26-0003", "pass", '"'),
    ]
    assert boards[1].failed_tests == ["C210"]
    r402 = next(t for t in boards[1].tests if t.name == "R402").measurements[0]
    assert (r402.value, r402.low, r402.high, r402.unit) == (45131532.0, 500000.0, None, "Ohm")
    assert boards[0].program == "MOTOR_DRV"


def test_gr228x_file_ending_inside_a_unit_is_refused_as_unfinished() -> None:
    with pytest.raises(ParseError) as info:
        _parse("gr228x", "@01-JAN-26  10:00:00 SN 1\nR1=1K(0.9K,1.1K)R\n")
    assert info.value.line == 1 and "no end marker" in info.value.reason


def test_spea_date_order_follows_the_format_record() -> None:
    text = "FORMAT;ddmm\nSTART;Programme;P;1;P;op;10/07/2026;16:15:03\nSN;X\nEND;PASS;10/07/2026;16:16:00\n"
    board = _parse("spea", text)[0]
    assert board.started is not None and (board.started.month, board.started.day) == (7, 10)
    assert board.tests == ()


def test_delimited_without_mapping_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="column mapping"):
        _parse("delimited", "a,b\n")


def test_undecodable_bytes_name_the_line_and_the_encoding() -> None:
    with pytest.raises(ParseError) as info:
        parser_for("gr228x")(b"ok\nstill ok\n\xff\xfe here\n", ParseOptions(encoding="utf-8"))
    assert info.value.line == 3 and "utf-8" in info.value.reason


# -- registry and config -----------------------------------------------------------------------------------


def _equipment(**overrides: object) -> ResultFilesEquipment:
    raw: dict[str, object] = {"id": "ict-1", "type": "ict", "adapter": "result_files", "path": "/srv/in",
                              "format": "i3070"}
    raw.update(overrides)
    return ResultFilesEquipment.model_validate(raw)


def test_config_reads_durations_lists_and_defaults() -> None:
    eq = _equipment(pattern=["*.log", "*.LOG"], poll_interval="500ms", settle="3s", timezone="Europe/Berlin")
    assert eq.patterns == ["*.log", "*.LOG"] and eq.poll_interval == 0.5 and eq.settle == 3.0
    assert eq.encoding == "utf-8" and eq.archive is None and eq.max_file_size == 32 << 20


@pytest.mark.parametrize(
    ("overrides", "words"),
    [({"format": "i3700"}, "did you mean 'i3070'"), ({"timezone": "Europe/Berlim"}, "unknown time zone"),
     ({"encoding": "cp9999"}, "unknown encoding"), ({"format": "delimited"}, "required with format: delimited"),
     ({"archive": "/srv/in"}, "must not be the scanned folder"), ({"colour": "red"}, "Extra inputs"),
     ({"settle": "soon"}, "duration")],
)
def test_config_mistakes_are_explained(overrides: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        _equipment(**overrides)


def test_every_config_field_is_described() -> None:
    for name, field in ResultFilesEquipment.model_fields.items():
        assert field.description, name


def test_a_registered_parser_is_accepted_by_the_config_and_used() -> None:
    @parsers.register("acme_fct")
    def parse(data: bytes, options: ParseOptions) -> list[TestedBoard]:
        return [TestedBoard(serial=data.decode().strip(), result="pass", raw_result="OK", test_method="fct")]

    try:
        eq = _equipment(format="acme_fct")
        assert parser_for(eq.format)(b"SN-9\n", eq.parse_options())[0].serial == "SN-9"
    finally:
        parsers._registered.pop("acme_fct")


PLUGIN = '''
from emsedge.adapters.result_files.model import TestedBoard, to_utc

def parse(data, options):
    return [TestedBoard(serial=line, result="pass", raw_result="P", test_method="fct")
            for line in options.decode(data).split()]
'''


@pytest.fixture
def installed_parser_plugin(tmp_path: Path) -> Iterator[None]:
    (tmp_path / "acme_parser_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "acme_parser_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-parser-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[emsedge.result_parsers]\nacme_lines = acme_parser_plugin:parse\n")
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("acme_parser_plugin", None)


def test_an_installed_parser_plugin_is_found_through_its_entry_point(installed_parser_plugin: None) -> None:
    assert "acme_lines" in parsers.available()
    eq = _equipment(format="acme_lines")
    boards = parser_for(eq.format)(b"A1 A2\n", eq.parse_options())
    assert [b.serial for b in boards] == ["A1", "A2"]


def test_tester_local_times_across_daylight_saving_changes_follow_zoneinfo() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert to_utc(datetime(2026, 1, 14, 10, 15, 2), berlin) == "2026-01-14T09:15:02.000Z"  # CET
    assert to_utc(datetime(2026, 7, 14, 10, 15, 2), berlin) == "2026-07-14T08:15:02.000Z"  # CEST
    # 02:30 on 25 Oct 2026 happens twice: read as its first occurrence (still CEST)
    assert to_utc(datetime(2026, 10, 25, 2, 30), berlin) == "2026-10-25T00:30:00.000Z"
    # 02:30 on 29 Mar 2026 never happens on a Berlin clock: zoneinfo reads it with the offset before the jump
    assert to_utc(datetime(2026, 3, 29, 2, 30), berlin) == "2026-03-29T01:30:00.000Z"
    assert to_utc(None, berlin) is None


def test_delimited_rows_with_a_serial_column_form_one_board_per_serial_and_limits_judge_rows() -> None:
    eq = _equipment(format="delimited", delimited={
        "separator": ",", "header_row": 1,
        "columns": {"serial": 1, "test": "step", "value": "v", "unit": "u", "low": "lo", "high": "hi",
                    "started": "when"},
    })
    text = (
        "sn,step,v,u,lo,hi,when\n"
        "A1,vcc,3.31,V,3.2,3.4,2026-02-01T10:00:00\n"
        "A1,idle,12,mA,,10,2026-02-01T10:00:00\n"
        "A2,vcc,3.29,V,3.2,3.4,2026-02-01T10:01:00+01:00\n"
        "\n"
        "A2,idle,9.5,mA,,10,2026-02-01T10:01:00+01:00\n"
    )
    boards = parser_for("delimited")(text.encode(), eq.parse_options())
    assert [(b.serial, b.result, b.raw_result, b.failed_tests) for b in boards] == [
        ("A1", "fail", "derived", ["idle"]), ("A2", "pass", "derived", []),
    ]
    idle = boards[0].tests[1].measurements[0]
    assert (idle.value, idle.unit, idle.high, idle.low) == (0.012, "A", 0.01, None)
    assert to_utc(boards[1].started, ZoneInfo("Asia/Tokyo")) == "2026-02-01T09:01:00.000Z"  # offset in the file wins


def test_delimited_names_a_missing_column_and_a_short_row() -> None:
    eq = _equipment(format="delimited", delimited={"separator": ";", "columns": {"serial": "SN", "test": "Test"}})
    with pytest.raises(ParseError, match="column 'SN'"):
        parser_for("delimited")(b"Serial;Test\nX;t\n", eq.parse_options())
    eq = _equipment(format="delimited", delimited={"separator": ";", "columns": {"serial": 1, "test": 3}})
    with pytest.raises(ParseError) as info:
        parser_for("delimited")(b"a;b;c\nX;y;z\nX;y\n", eq.parse_options())
    assert info.value.line == 3


def test_spea_file_with_two_boards_yields_both() -> None:
    one = "START;Programme;P;1;P;op;01/02/2026;10:00:00\nSN;{sn}\nEND;{v};01/02/2026;10:00:30\n"
    text = "FORMAT;mmdd\n" + one.format(sn="S1", v="PASS") + one.format(sn="S2", v="ABORT")
    boards = _parse("spea", text)
    assert [(b.serial, b.result, b.raw_result) for b in boards] == [("S1", "pass", "PASS"), ("S2", "aborted", "ABORT")]


def test_a_utf16_file_is_not_mistaken_for_binary() -> None:
    eq = _equipment(format="delimited", encoding="utf-16",
                    delimited={"separator": "\t", "columns": {"serial": "SN", "test": "Test", "value": "V"}})
    boards = parser_for("delimited")("SN\tTest\tV\nU1\tvcc\t3.3\n".encode("utf-16"), eq.parse_options())
    assert boards[0].serial == "U1" and boards[0].tests[0].measurements[0].value == 3.3
