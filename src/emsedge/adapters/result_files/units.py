"""Numbers as testers write them -> floats in base SI units, and unit spellings -> one UCUM-style symbol.

Two conventions meet here:

* SPICE-style suffixes without a unit (GR228x, many ICT logs): `100.2K`, `4.7U`, `1MEG`, `10.2N`. Case does
  not matter and `M` is *milli*; mega is `MEG`. `spice_value()` reads these.
* Unit-style quantities (functional-test CSVs, flying probers): `4.7kΩ`, `100 nF`, `12mA`, `1.5MΩ`,
  `10 µs`. Here case matters (`m` milli, `M` mega), the micro sign may be `µ` (U+00B5), `μ` (U+03BC) or
  `u`, and ohm may be `Ω` (U+03A9), `Ω` (U+2126), `ohm` or Takaya's `O`. `quantity()` reads these.

Results are plain floats (SI base unit) and units are returned as the contract's symbols: `Ohm`, `F`,
`H`, `V`, `A`, `Hz`, `s`, `W`, `Cel`, `%`; an unknown unit is passed through unchanged.
"""

from __future__ import annotations

import math
import re

SPICE_SCALE: dict[str, float] = {
    "T": 1e12, "G": 1e9, "MEG": 1e6, "K": 1e3, "": 1.0, "M": 1e-3, "U": 1e-6, "N": 1e-9, "P": 1e-12,
}
_SPICE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(MEG|[TGKMUNP])?\s*$", re.IGNORECASE)

UNIT_PREFIX: dict[str, float] = {
    "T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3, "K": 1e3, "": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6,
    "μ": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15,
}
UNIT_SYMBOLS: dict[str, str] = {
    # keys are lower case: "Ω" (U+03A9) and "Ω" (U+2126) both lower to "ω" (U+03C9)
    "ohm": "Ohm", "ohms": "Ohm", "ω": "Ohm", "o": "Ohm",
    "f": "F", "h": "H", "v": "V", "a": "A", "hz": "Hz", "s": "s", "w": "W", "%": "%",
    "°c": "Cel", "degc": "Cel", "cel": "Cel",
}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$")


class ValueFormatError(ValueError):
    """A value that is not a number in any accepted spelling."""


def clean(value: float) -> float:
    """12 significant digits: `100.20007K` is 100200.07, not 100200.06999999999 (testers print fewer)."""
    return float(f"{value:.12g}")


def spice_value(text: str) -> float:
    """`100.2K` -> 100200.0, `4.7U` -> 4.7e-06, `1MEG` -> 1e6, `52M` -> 0.052 (SPICE: M is milli)."""
    m = _SPICE.match(text)
    if m is None:
        raise ValueFormatError(f"not a number: {text!r}")
    value = float(m.group(1)) * SPICE_SCALE[(m.group(2) or "").upper()]
    if not math.isfinite(value):
        raise ValueFormatError(f"not a finite number: {text!r}")
    return clean(value)


def unit_symbol(unit: str) -> str:
    """`Ω`, `ohm`, `OHM` -> `Ohm`; `v` -> `V`; `°C` -> `Cel`; anything unknown is returned as written."""
    return UNIT_SYMBOLS.get(unit.strip().lower(), unit.strip())


def split_unit(unit: str) -> tuple[float, str | None]:
    """`kΩ` -> (1e3, "Ohm"), `µA` -> (1e-6, "A"), `mV` -> (1e-3, "V"), `Ohm` -> (1.0, "Ohm"), `` -> (1, None).

    A whole unit wins over a prefix reading, so `F` is farad and `Hz` hertz; a spelling that is neither
    (`mm`, `min`, `counts`) is passed through unscaled.
    """
    unit = unit.strip()
    if not unit:
        return 1.0, None
    if unit.lower() in UNIT_SYMBOLS:
        return 1.0, UNIT_SYMBOLS[unit.lower()]
    prefix, rest = unit[0], unit[1:]
    if rest and prefix in UNIT_PREFIX and rest.lower() in UNIT_SYMBOLS:
        return UNIT_PREFIX[prefix], UNIT_SYMBOLS[rest.lower()]
    return 1.0, unit


def quantity(text: str, unit: str | None = None) -> tuple[float, str | None]:
    """`4.7kΩ` -> (4700.0, "Ohm"); `100 nF` -> (1e-07, "F"); with a separate `unit` column:
    quantity("4.7", "kΩ") -> (4700.0, "Ohm"). A bare SPICE suffix (`100.2K`) is read as SPICE."""
    m = _NUMBER.match(text)
    if m is None:
        raise ValueFormatError(f"not a number: {text!r}")
    number, attached = float(m.group(1)), m.group(2)
    if attached and unit:
        raise ValueFormatError(f"value {text!r} carries a unit and the unit column says {unit!r}")
    spelled = attached or unit or ""
    if attached and _SPICE.match(text) and attached.upper() in SPICE_SCALE:
        scale, symbol = SPICE_SCALE[attached.upper()], None
    else:
        scale, symbol = split_unit(spelled)
    value = number * scale
    if not math.isfinite(value):
        raise ValueFormatError(f"not a finite number: {text!r}")
    return clean(value), symbol
