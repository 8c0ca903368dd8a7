"""Config of the `result_files` adapter: a folder a tester writes result files into, and how to read them.

```yaml
equipment:
  - id: ict-1
    type: ict                      # or fct, fpt
    adapter: result_files
    path: /srv/testers/ict-1/out   # folder to scan (local or a mounted SMB/NFS share)
    pattern: "*.log"               # glob, may be a list
    format: i3070                  # i3070 | gr228x | spea | takaya_atd | delimited | <plugin name>
    timezone: Europe/Berlin        # tester-local timestamps without offset are converted with this
    encoding: cp1252               # default utf-8
    poll_interval: 2s
    settle: 2s
    archive: /srv/testers/ict-1/done
    error: /srv/testers/ict-1/error
```
"""

from __future__ import annotations

import codecs
import difflib
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from emsedge.adapters.result_files import parsers
from emsedge.adapters.result_files.model import TestMethod
from emsedge.config import Duration, DurationOrZero, EquipmentBase

BoardField = Literal[
    "serial", "result", "program", "program_revision", "tester", "operator", "started", "ended",
    "board_number", "panel_serial",
]
RowField = Literal["test", "measurement", "value", "unit", "low", "high", "nominal", "test_result"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DelimitedMapping(_Strict):
    """How to read a delimited (CSV-like) functional-test file without code.

    The table has one row per measurement. A board attribute comes from a column (`columns:`) or from a
    `label<sep>value` row above the table (`key_rows:`); rows with the same serial in a row form one
    board, so a file may hold several boards. Rows of one test name form one test.
    """

    separator: str = Field(",", min_length=1, max_length=1, description="Field separator, e.g. ';' or '\\t'.")
    quote: str = Field('"', min_length=1, max_length=1, description="Quote character around fields.")
    header_row: int = Field(
        1, ge=1, description="1-based line number of the column-name row; rows after it are the table."
    )
    columns: dict[BoardField | RowField, str | int] = Field(
        description="Field -> column name in the header row, or 1-based column number. Needs `test` (and "
        "`serial` unless a key row gives it); `value`, `unit`, `low`, `high`, `nominal`, `test_result` optional.",
    )
    key_rows: dict[BoardField, str] = Field(
        default_factory=dict,
        description="Field -> label of a `label<sep>value` row above the header, e.g. serial: 'Serial number'.",
    )
    pass_values: list[str] = Field(
        ["PASS", "PASSED", "OK", "P", "GOOD", "1", "TRUE"],
        description="Result cells meaning pass (case-insensitive); anything else not listed below is a fail.",
    )
    aborted_values: list[str] = Field(["ABORT", "ABORTED", "STOP", "CANCELLED"], description="Cells meaning aborted.")
    error_values: list[str] = Field(["ERROR", "ERR"], description="Cells meaning a tester error.")
    decimal_comma: bool = Field(False, description="Numbers are written 4,7 instead of 4.7.")
    date_format: str | None = Field(
        None, description="strptime format of date cells, e.g. '%d.%m.%Y %H:%M:%S'; default ISO 8601."
    )

    @model_validator(mode="after")
    def _needs(self) -> DelimitedMapping:
        if "test" not in self.columns:
            raise ValueError("columns needs `test` (the test name column)")
        if "serial" not in self.columns and "serial" not in self.key_rows:
            raise ValueError("the serial comes from a column (columns.serial) or a key row (key_rows.serial)")
        return self


class ResultFilesEquipment(EquipmentBase):
    """A tester (ICT, flying probe, functional test) that writes one result file per board or panel."""

    adapter: Literal["result_files"] = Field(description="Reads tester result files from a folder.")
    type: Literal["ict", "fct", "fpt", "other"] = Field(  # a narrowed EquipmentType
        description="Kind of tester: ict (in-circuit), fpt (flying probe), fct (functional), other."
    )
    path: Path = Field(description="Folder to scan (local, or a mounted SMB/NFS share).")
    pattern: str | list[str] = Field("*", description="Glob (or list of globs) of result file names, e.g. '*.log'.")
    recursive: bool = Field(False, description="Also scan sub-folders (the archive and error folders are skipped).")
    format: str = Field(description="Parser: i3070, gr228x, spea, takaya_atd, delimited, or an installed plug-in.")
    timezone: str = Field("UTC", description="IANA zone of the tester's clock, e.g. Europe/Berlin.")
    encoding: str = Field("utf-8", description="Text encoding of the files, e.g. cp1252.")
    date_order: Literal["dmy", "mdy", "ymd"] | None = Field(
        None, description="Order of numeric dates (4/5/2026); default: the format's convention."
    )
    test_method: TestMethod | None = Field(
        None, description="Overrides the test method the parser reports (ict, fpt, fct, bst)."
    )
    poll_interval: Duration = Field(2.0, description="Folder scan period (polling works on network shares).")
    settle: DurationOrZero = Field(2.0, description="A file is read once its size and mtime were unchanged this long.")
    archive: Path | None = Field(
        None, description="Processed files move here once their events are durable; omit to leave them in place."
    )
    error: Path | None = Field(
        None, description="Rejected files move here with <name>.reason.txt beside them; omit to leave them."
    )
    max_file_size: ByteSize = Field(
        ByteSize(32 << 20), description="Larger files are rejected unread (bounded memory), with a reason."
    )
    ledger: Path | None = Field(
        None, description="SQLite ledger of processed files; default: <buffer folder>/result_files-<id>.ledger."
    )
    ledger_retention: Duration = Field(
        90 * 24 * 3600.0, description="Ledger entries older than this are forgotten (default 90 days, 2160h)."
    )
    delimited: DelimitedMapping | None = Field(None, description="Column mapping; required with format: delimited.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        known = parsers.available()
        if v not in known:
            close = difflib.get_close_matches(v, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown result-file format {v!r}{hint}; known: {', '.join(known)}")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Berlin or UTC") from None
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; e.g. utf-8, cp1252, latin-1, shift_jis") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ResultFilesEquipment:
        if (self.format == "delimited") != (self.delimited is not None):
            raise ValueError("`delimited:` (the column mapping) is required with format: delimited, and only then")
        for name, folder in (("archive", self.archive), ("error", self.error)):
            if folder is not None and folder.resolve() == self.path.resolve():
                raise ValueError(f"`{name}` must not be the scanned folder itself")
        return self

    @property
    def patterns(self) -> list[str]:
        return [self.pattern] if isinstance(self.pattern, str) else list(self.pattern)

    def parse_options(self) -> parsers.ParseOptions:
        return parsers.ParseOptions(encoding=self.encoding, date_order=self.date_order, delimited=self.delimited)
