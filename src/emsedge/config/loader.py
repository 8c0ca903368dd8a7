"""Loading a config file: YAML, equipment profiles, environment overrides, located errors.

Loading order: YAML file -> equipment profiles merged in (`profile: reflow/generic-10-zone`) ->
environment overrides (`EMSEDGE_MQTT__PASSWORD=...`, nested with `__`) -> validation. Any fault becomes
a `ConfigError` whose messages name the file, the line, the field path and a hint:
`file:line:col: field.path: problem (hint: ...)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from emsedge.adapters import refresh, registry
from emsedge.config.core import Settings
from emsedge.config.equipment import EquipmentBase, adapter_tag
from emsedge.config.types import did_you_mean, units_required
from emsedge.errors import ConfigError
from emsedge.packaged import shipped_dir


@dataclass(frozen=True)
class Position:
    file: Path
    line: int  # 1-based
    column: int  # 1-based


class _PositionIndex:
    """Maps a path of keys/indices in the loaded document to where it was written."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str | int, ...], Position] = {}

    def add(self, node: yaml.Node, file: Path, path: tuple[str | int, ...] = ()) -> None:
        self.positions.setdefault(path, Position(file, node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.positions[(*path, key)] = Position(
                    file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
                )
                self._add_children(value_node, file, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.positions[(*path, i)] = Position(file, item.start_mark.line + 1, item.start_mark.column + 1)
                self._add_children(item, file, (*path, i))

    def _add_children(self, node: yaml.Node, file: Path, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.add(node, file, path)

    def find(self, path: tuple[str | int, ...]) -> Position | None:
        for cut in range(len(path), -1, -1):
            if (pos := self.positions.get(path[:cut])) is not None:
                return pos
        return None


def _model_at(path: tuple[str | int, ...], data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` (for 'did you mean' hints)."""
    model: Any = Settings
    node: Any = data
    for part in path:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            continue
        if not isinstance(node, dict) or model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        node = node.get(part)
        model = _annotation_model(field.annotation, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _annotation_model(annotation: Any, value: Any) -> Any:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    args = get_args(annotation)
    if get_origin(annotation) is list and args:
        return _annotation_model(args[0], value[0] if isinstance(value, list) and value else None)
    if isinstance(annotation, type) and issubclass(annotation, EquipmentBase):
        # An equipment entry: the model its adapter registered.
        spec = registry().specs.get(adapter_tag(value) or "")
        return spec.config_model if spec is not None else annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates = [a for a in _flatten(args) if isinstance(a, type) and issubclass(a, BaseModel)]
    return candidates[0] if len(candidates) == 1 else None


def _flatten(args: tuple[Any, ...]) -> Iterator[Any]:
    for a in args:
        inner = get_args(a)
        if inner and not (isinstance(a, type) and issubclass(a, BaseModel)):
            yield from _flatten(inner)
        else:
            yield a


_HINTS = {
    "missing": "this field is required",
    "literal_error": "use one of the allowed values",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "bool_parsing": "write true or false",
    "list_type": "write a YAML list (- item, or [a, b])",
    "model_type": "write a mapping (key: value)",
    "dict_type": "write a mapping (key: value)",
    "byte_size": "write a size such as 512MiB or 1GiB",
    "string_type": "write text (quote it if it looks like a number)",
    "path_not_file": "no such file; relative paths are relative to the working directory (/ under systemd)",
}


def _format_problem(err: Any, data: Any, locator: _Locator, file: Path) -> str:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind = err["type"]
    if len(loc) > 2 and loc[0] == "equipment" and isinstance(loc[1], int):
        loc = loc[:2] + loc[3:]  # the adapter union puts its tag (the adapter's name) after the index
    if kind == "adapter_missing" and (name := adapter_tag(_value_at(loc, data))) is not None:
        kind, loc = "adapter_unknown", (*loc, "adapter")  # pydantic reports a missing and an unknown tag alike
    # Pydantic puts model-level validator errors on the model.
    field_path = locator.display(loc, data) or "(top level)"
    pos, note = locator.locate(loc)
    where = f"{pos.file}:{pos.line}:{pos.column}" if pos else f"{file}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    hint = _HINTS.get(kind, "")
    if kind == "adapter_unknown":
        msg, hint = _unknown_adapter(str(name))
    elif kind == "adapter_missing":
        hint = f"say which adapter talks to this machine: adapter: {' | '.join(registry().specs)}"
    elif kind == "extra_forbidden" and loc:
        model = _model_at(loc[:-1], data)
        known = list(model.model_fields) if model else []
        msg = f"unknown field {loc[-1]!r}"
        hint = (
            f"{did_you_mean(str(loc[-1]), known).removeprefix('; ')} " if known else ""
        ) + (f"allowed here: {', '.join(known)}" if known else "remove it")
    elif kind == "literal_error":
        hint = ""
    elif kind == "path_not_file":
        msg = f"{err.get('input')} does not exist or is not a file"
    elif kind == "missing" and loc:
        msg = f"required field {loc[-1]!r} is missing"
        hint = ""
    if note:
        hint = (hint + "; " if hint else "") + note
    return f"{where}: {field_path}: {msg}" + (f" (hint: {hint.strip()})" if hint.strip() else "")


def _value_at(loc: tuple[str | int, ...], data: Any) -> Any:
    node = data
    for part in loc:
        in_mapping = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_mapping or in_list):
            return None
        node = node[part]
    return node


def _unknown_adapter(name: str) -> tuple[str, str]:
    """The message and hint for an `adapter:` no installed package registered."""
    reg = registry()
    msg = (
        f"unknown adapter {name!r}{did_you_mean(name, reg.specs)} (built in: {', '.join(reg.builtin()) or 'none'}; "
        f"installed plugins: {', '.join(reg.plugins()) or 'none'})"
    )
    if not reg.builtin():
        return msg, (
            "emsedge's own adapters are not registered: install emsedge (pip install -e .) to record its entry points"
        )
    if name in reg.broken:
        return f"adapter {name!r} is installed but cannot be loaded: {reg.broken[name]}", (
            "check that its package is installed for this Python and made for this emsedge version"
        )
    return msg, ""


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKey(yaml.MarkedYAMLError):
    """A key written twice in one mapping: YAML would silently keep the last one."""


class _YamlLoader(_BaseLoader):  # type: ignore[misc]
    """libyaml's parser (when present) with a constructor that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value
            if key in seen:
                first = seen[key].start_mark
                raise _DuplicateKey(
                    problem=f"duplicate key {key!r} (first written at line {first.line + 1}; YAML would keep "
                    "only the last one)",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return dict(super().construct_mapping(node, deep=deep))


class _NotStreamable(Exception):
    """The document uses something the streaming constructor leaves to the full loader (merge keys, explicit
    collection tags, complex keys, recursive aliases, several documents)."""


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


def _stream_construct(loader: Any) -> Any:
    """The document built straight from the parser's events, as `get_single_data` would build it.

    The loader's own path composes the whole node tree first (a node and two marks per scalar: ~6 KB per
    Modbus signal, 265 MB of peak memory and 20 s for a 50k-signal file) and only then constructs the data.
    Here every event is dropped as soon as it is used, so peak memory is the data itself; scalars go through
    the loader's own resolver and constructors (same types, same errors), duplicate keys are refused the same
    way, and anything unusual raises `_NotStreamable` so the caller loads the file the old way.
    """
    anchors: dict[str, Any] = {}
    constructors = loader.yaml_constructors
    loader.get_event()  # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        return None
    loader.get_event()  # DocumentStart

    plain: dict[tuple[str, bool], Any] = {}
    """Untagged short scalars already built (value, plain or quoted) -> their str/int/float/bool/None: units,
    types, tables and names repeat across thousands of signals, so each is resolved and stored once."""

    def scalar(event: Any) -> Any:
        tag = event.tag
        key = None
        if tag is None or tag == "!":
            if len(event.value) <= 64:
                key = (event.value, event.implicit[0])
                if (known := plain.get(key, plain)) is not plain:
                    return known
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        construct = constructors.get(tag) or constructors[None]
        data = construct(loader, node)
        if key is not None and type(data) in (str, int, float, bool, type(None)):
            plain[key] = data
        return data

    def value() -> Any:
        event = loader.get_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise _NotStreamable  # undefined, or an alias inside its own anchor: the loader explains
            return anchors[event.anchor]
        if isinstance(event, yaml.ScalarEvent):
            data = scalar(event)
        elif isinstance(event, yaml.SequenceStartEvent):
            if event.tag not in (None, "!", _SEQ_TAG):
                raise _NotStreamable
            data = []
            while not loader.check_event(yaml.SequenceEndEvent):
                data.append(value())
            loader.get_event()
        elif isinstance(event, yaml.MappingStartEvent):
            if event.tag not in (None, "!", _MAP_TAG):
                raise _NotStreamable
            data = {}
            seen: dict[str, Any] = {}
            while not loader.check_event(yaml.MappingEndEvent):
                key_event = loader.get_event()
                if not isinstance(key_event, yaml.ScalarEvent):
                    raise _NotStreamable
                tag = key_event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, key_event.value, key_event.implicit)
                if tag in (_MERGE_TAG, _VALUE_TAG):
                    raise _NotStreamable
                key = scalar(key_event)
                mark: Any = key_event.start_mark
                if key_event.value in seen:
                    raise _DuplicateKey(
                        problem=f"duplicate key {key_event.value!r} (first written at line "
                        f"{seen[key_event.value].line + 1}; YAML would keep only the last one)",
                        problem_mark=mark,
                    )
                seen[key_event.value] = mark
                data[key] = value()
            loader.get_event()
        else:  # pragma: no cover - the parser yields nothing else here
            raise _NotStreamable
        if event.anchor is not None:
            anchors[event.anchor] = data
        return data

    data = value()
    loader.get_event()  # DocumentEnd
    if not loader.check_event(yaml.StreamEndEvent):
        raise _NotStreamable  # several documents: the loader's error
    return data


def _tab_in_indentation(text: str) -> tuple[int, int] | None:
    """(line, column) of the first tab in a line's indentation, 1-based."""
    for number, line in enumerate(text.splitlines(), 1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            return number, indent.index("\t") + 1
    return None


def _load_yaml(file: Path, *, with_nodes: bool = False) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file (libyaml's loader when present). The node tree, which holds the positions for
    error messages, costs several times the data's memory, so it is only built when asked for: after
    validation failed. Otherwise the data is built straight from the parser's events (`_stream_construct`),
    which keeps the peak memory of a large file near the size of its data."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: file not found (hint: check the path given with -c)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read the file: {exc}"]) from None
    loader = _YamlLoader(text)
    try:
        if with_nodes:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        else:
            node = None
            try:
                data = _stream_construct(loader)
            except _NotStreamable:
                loader.dispose()
                loader = _YamlLoader(text)
                data = loader.get_single_data()
    except _DuplicateKey as exc:
        mark = exc.problem_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        raise ConfigError([f"{where}: {exc.problem} (hint: remove one of them or merge them)"]) from None
    except yaml.MarkedYAMLError as exc:
        if (tab := _tab_in_indentation(text)) is not None:
            raise ConfigError([
                f"{file}:{tab[0]}:{tab[1]}: a tab in the indentation (hint: YAML indents with spaces only; "
                "set your editor to insert spaces)"
            ]) from None
        mark = exc.problem_mark
        line = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"{file}{line}: YAML syntax error: {exc.problem} (hint: check indentation and quoting)"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    return data, node


def profile_search_path(config_file: Path) -> list[Path]:
    """Where `profile: <type>/<model>` is looked up, first match wins."""
    paths = []
    if env := os.environ.get("EMSEDGE_PROFILES"):
        paths += [Path(p) for p in env.split(os.pathsep) if p]
    here = config_file.resolve().parent
    paths += [here / "adapters", here.parent / "adapters", Path("/etc/emsedge/adapters"), Path.cwd() / "adapters"]
    paths.append(packaged_profiles())
    return list(dict.fromkeys(paths))


def packaged_profiles() -> Path:
    """The equipment profiles shipped with emsedge (inside the wheel, or the checkout's `adapters/`)."""
    return shipped_dir("adapters")


_MERGED_LISTS = ("signals", "status_variables")


@dataclass(frozen=True)
class _ProfileUse:
    """Where a profile-based entry's merged fields came from, for errors in the user's terms."""

    name: str  # as written: reflow/generic-10-zone
    file: Path
    # list key -> per merged item: (index in the user's entry or None, index in the profile or None)
    origins: dict[str, list[tuple[int | None, int | None]]]


def _merge_profile(
    profile: Mapping[str, Any], entry: Mapping[str, Any],
    origins: dict[str, list[tuple[int | None, int | None]]] | None = None,
) -> dict[str, Any]:
    """Entry over profile: mappings merge key by key; `signals` and `status_variables` merge by name.

    `origins`, when given, receives for each merged list item where it came from (user index, profile index).
    """
    merged: dict[str, Any] = dict(profile)
    for key, value in entry.items():
        base = merged.get(key)
        if key in _MERGED_LISTS and isinstance(base, list) and isinstance(value, list):
            by_name = {s.get("name"): dict(s) for s in base if isinstance(s, dict)}
            source: dict[Any, tuple[int | None, int | None]] = {
                s.get("name"): (None, i) for i, s in enumerate(base) if isinstance(s, dict)
            }
            order = [s.get("name") for s in base if isinstance(s, dict)]
            for u, s in enumerate(value):
                if not isinstance(s, dict):
                    continue
                name = s.get("name")
                if name in by_name:
                    by_name[name] = _merge_profile(by_name[name], s)
                    source[name] = (u, source[name][1])
                else:
                    by_name[name] = dict(s)
                    source[name] = (u, None)
                    order.append(name)
            kept = [n for n in order if not by_name[n].get("remove")]
            merged[key] = [by_name[n] for n in kept]
            if origins is not None:
                origins[key] = [source[n] for n in kept]
        elif isinstance(base, dict) and isinstance(value, dict):
            merged[key] = _merge_profile(base, value)
        else:
            merged[key] = value
    merged.pop("profile", None)
    return merged


class _Locator:
    """Finds where a field of the validated (merged) document was written, in the user's terms.

    For a profile-based entry the answer is always a line of the user's file (the override, or the entry's
    `profile:` line); when the field itself came from the profile, `note` says so and where.
    """

    def __init__(self, file: Path, profiles: Mapping[int, _ProfileUse]) -> None:
        self.file = file
        self.profiles = profiles
        self.user = _PositionIndex()
        _, node = _load_yaml(file, with_nodes=True)
        if node is not None:
            self.user.add(node, file)
        self.profile_index: dict[int, _PositionIndex] = {}
        for i, use in profiles.items():
            index = _PositionIndex()
            _, profile_node = _load_yaml(use.file, with_nodes=True)
            if profile_node is not None:
                index.add(profile_node, use.file)
            self.profile_index[i] = index

    def locate(self, loc: tuple[str | int, ...]) -> tuple[Position | None, str]:
        """(position, note) of `loc`; the note names the profile a field came from, or is empty."""
        if len(loc) < 2 or loc[0] != "equipment" or not isinstance(loc[1], int) or loc[1] not in self.profiles:
            return self.user.find(loc), ""
        i, rest = loc[1], loc[2:]
        use = self.profiles[i]
        user_rest: tuple[str | int, ...] | None = rest
        profile_rest: tuple[str | int, ...] | None = rest
        if len(rest) >= 2 and rest[0] in use.origins and isinstance(rest[1], int):
            items = use.origins[str(rest[0])]
            u, pi = items[rest[1]] if rest[1] < len(items) else (None, None)
            user_rest = None if u is None else (rest[0], u, *rest[2:])
            profile_rest = None if pi is None else (rest[0], pi, *rest[2:])
        in_profile = None
        if profile_rest is not None:
            in_profile = self.profile_index[i].find(profile_rest)
        if user_rest is not None and (exact := self.user.positions.get(("equipment", i, *user_rest))):
            if in_profile is None or profile_rest is None or len(profile_rest) < 2:
                return exact, f"entry based on profile {use.name}"
            item = self.profile_index[i].positions.get(profile_rest[:2]) or in_profile
            return exact, f"overrides profile {use.name} at {use.file.name}:{item.line}:{item.column}"
        nearest = self.user.find(("equipment", i, *user_rest)) if user_rest is not None else None
        if nearest is None or nearest == self.user.positions.get(("equipment", i)):
            nearest = self.user.positions.get(("equipment", i, "profile")) or nearest
        note = f"from profile {use.name}" + (
            f" at {use.file.name}:{in_profile.line}:{in_profile.column}" if in_profile else ""
        )
        return nearest, note

    def display(self, loc: tuple[str | int, ...], data: Any) -> str:
        """The dotted field path; inside a profile-based entry list items are named (signals[zone1_temp])."""
        if len(loc) >= 4 and loc[0] == "equipment" and loc[1] in self.profiles and loc[2] in _MERGED_LISTS:
            item = _value_at(loc[:4], data)
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                tail = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[4:])
                return _dotted(loc[:3]) + f"[{item['name']}]" + tail
        return _dotted(loc)


def _resolve_profiles(data: Any, file: Path) -> tuple[dict[int, _ProfileUse], list[str]]:
    """Merge each `profile:` into its entry; returns the profile used per equipment index and problems."""
    used: dict[int, _ProfileUse] = {}
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("equipment"), list):
        return used, problems
    search = profile_search_path(file)
    for i, entry in enumerate(data["equipment"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("profile"), str):
            continue
        name = entry["profile"]
        found = next((p / f"{name}.yaml" for p in search if (p / f"{name}.yaml").is_file()), None)
        if found is None:
            available = available_profiles(search)
            suggestion = did_you_mean(name, available).removeprefix("; ")
            hint = suggestion or "available: " + (", ".join(available[:12]) or "none")
            hint += "; searched: " + ", ".join(str(d) for d in search)
            pos = _Locator(file, {}).user.find(("equipment", i, "profile"))
            where = f"{pos.file}:{pos.line}:{pos.column}" if pos else str(file)
            problems.append(f"{where}: equipment[{i}].profile: profile {name!r} not found (hint: {hint})")
            continue
        profile_data, _ = _load_yaml(found)
        if not isinstance(profile_data, dict):
            problems.append(f"{found}: a profile is a mapping of equipment fields")
            continue
        profile_data = {k: v for k, v in profile_data.items() if k not in ("description", "model", "vendor")}
        origins: dict[str, list[tuple[int | None, int | None]]] = {}
        data["equipment"][i] = _merge_profile(profile_data, entry, origins)
        used[i] = _ProfileUse(name, found, origins)
    return used, problems


def available_profiles(search: list[Path] | None = None) -> list[str]:
    """Profile names (`<type>/<model>`) found on the search path (default: the packaged profiles)."""
    dirs = search if search is not None else [packaged_profiles()]
    return sorted({str(p.relative_to(d).with_suffix("")) for d in dirs if d.is_dir() for p in d.glob("*/*.yaml")})


def _duplicate_ids(data: Any, file: Path, profiles: Mapping[int, _ProfileUse]) -> list[str]:
    """Repeated equipment ids and signal names, each reported at the line that repeats it."""
    entries = data.get("equipment") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    repeats: list[tuple[tuple[str | int, ...], str]] = []
    first_id: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        ident = entry.get("id")
        if isinstance(ident, str):
            if ident in first_id:
                msg = f"equipment id {ident!r} is already used by equipment[{first_id[ident]}]"
                repeats.append((("equipment", i, "id"), msg))
            else:
                first_id[ident] = i
        for key in _MERGED_LISTS:
            seen: set[str] = set()
            for k, item in enumerate(entry.get(key) or []):
                name = item.get("name") if isinstance(item, dict) else None
                if isinstance(name, str) and name in seen:
                    msg = f"{key[:-1].replace('_', ' ')} name {name!r} is repeated"
                    repeats.append((("equipment", i, key, k, "name"), msg))
                elif isinstance(name, str):
                    seen.add(name)
    if not repeats:
        return []
    locator = _Locator(file, profiles)
    out = []
    for loc, msg in repeats:
        pos, note = locator.locate(loc)
        where = f"{pos.file}:{pos.line}:{pos.column}" if pos else str(file)
        hint = "ids and names must be unique" + (f"; {note}" if note else "")
        out.append(f"{where}: {locator.display(loc, data)}: {msg} (hint: {hint})")
    return out


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, merge profiles, apply environment overrides and validate. Raises ConfigError."""
    file = Path(path)
    data, _ = _load_yaml(file)
    if data is None:
        raise ConfigError([f"{file}: the file is empty (hint: start from config/example.yaml)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{file}:1:1: the top level must be a mapping with gateway, mqtt, equipment, ..."])
    profiles, problems = _resolve_profiles(data, file)
    problems += _duplicate_ids(data, file, profiles)
    if problems:
        raise ConfigError(problems)
    named = {adapter_tag(e) for e in data.get("equipment") or [] if isinstance(e, dict)} - {None}
    if not named <= registry().specs.keys():
        refresh()  # an adapter package may have been installed since the registry was read
    saved = None
    if environ is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        with units_required():
            return Settings(**data)
    except ValidationError as exc:
        locator = _Locator(file, profiles)
        raise ConfigError([_format_problem(e, data, locator, file) for e in exc.errors()]) from None
    except TypeError as exc:  # e.g. a top-level key that is not a string
        raise ConfigError([f"{file}: {exc}"]) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
