"""Files shipped with emsedge: equipment profiles, example configs, the virtual line's config.

A wheel carries them inside the package (`emsedge/data/adapters`, `emsedge/data/config`, copied there by
the build, see setup.py); a source checkout or an editable install reads them from the checkout's
`adapters/` and `config/`. Either way `shipped("config/demo.yaml")` finds them, so `emsedge demo` and
`emsedge simulate` run from any working directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def shipped_dir(name: str) -> Path:
    """`adapters` or `config`: the packaged copy when installed from a wheel, else the checkout's."""
    packaged = PACKAGE_DATA / name
    return packaged if packaged.is_dir() else SOURCE_ROOT / name


def find_file(name: str | Path) -> Path:
    """A file named on the command line: as given when it exists (or is absolute), else the shipped copy
    (`config/demo.yaml` -> the package's), else the name as given (the caller reports it missing)."""
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts
    if parts and parts[0] in ("adapters", "config"):
        candidate = shipped_dir(parts[0]).joinpath(*parts[1:])
        if candidate.is_file():
            return candidate
    return path


__all__ = ["PACKAGE_DATA", "SOURCE_ROOT", "find_file", "shipped_dir"]
