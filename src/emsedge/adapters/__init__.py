"""The adapter registry: every installed `emsedge.adapters` entry point, built-in or third-party.

Each entry point names an `AdapterSpec` (see `emsedge.adapters.spec`); emsedge's own adapters are entry
points of the emsedge distribution, so a package installed beside it is found the same way. The equipment
union of the config, the JSON Schema and the "unknown adapter, did you mean" hint are assembled from here.

Loading a spec imports only its config model. An entry point that fails to load (a broken or incompatible
package) does not stop the gateway: it is left out and its error is kept in `Registry.broken`, which the
config loader reports if a config names that adapter.

This module imports nothing at module level beyond the standard library: every `emsedge.adapters.*`
import runs it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    from emsedge.adapters.spec import AdapterSpec

GROUP = "emsedge.adapters"
BUILTIN_DISTRIBUTION = "emsedge"


@dataclass(frozen=True)
class Registry:
    """The adapters installed in this environment, by name, built-in ones first."""

    specs: dict[str, AdapterSpec[Any]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    """Distribution (package) that registered each adapter."""
    broken: dict[str, str] = field(default_factory=dict)
    """Entry points that could not be loaded, with the reason."""

    def builtin(self) -> list[str]:
        return [n for n in self.specs if self.origin.get(n) == BUILTIN_DISTRIBUTION]

    def plugins(self) -> list[str]:
        return [n for n in self.specs if self.origin.get(n) != BUILTIN_DISTRIBUTION]


def _check(name: str, spec: object) -> str | None:
    """Why a loaded entry point is not a usable spec, or None."""
    from pydantic import BaseModel  # noqa: PLC0415

    from emsedge.adapters.spec import AdapterSpec  # noqa: PLC0415
    from emsedge.config.equipment import EquipmentBase  # noqa: PLC0415

    if not isinstance(spec, AdapterSpec):
        return f"the entry point names a {type(spec).__name__}, not an emsedge.adapters.spec.AdapterSpec"
    if spec.name != name:
        return f"the spec is named {spec.name!r} but registered as {name!r}"
    model = spec.config_model
    if not (isinstance(model, type) and issubclass(model, BaseModel) and issubclass(model, EquipmentBase)):
        return "config_model is not a subclass of emsedge.config.EquipmentBase"
    field_info = model.model_fields.get("adapter")
    if field_info is None or get_args(field_info.annotation) != (name,):
        return f"{model.__name__} must declare `adapter: Literal[{name!r}]`"
    return None


def _scan() -> Registry:
    reg = Registry()
    found = sorted(
        entry_points(group=GROUP),
        key=lambda ep: (ep.dist is None or ep.dist.name != BUILTIN_DISTRIBUTION, ep.name),
    )
    for ep in found:
        if ep.name in reg.specs:
            continue  # a built-in name wins over a plugin that reuses it
        try:
            spec = ep.load()
        except Exception as exc:
            reg.broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        problem = _check(ep.name, spec)
        if problem is not None:
            reg.broken[ep.name] = f"{ep.value}: {problem}"
            continue
        reg.specs[ep.name] = spec
        reg.origin[ep.name] = ep.dist.name if ep.dist is not None else "?"
    return reg


@cache
def registry() -> Registry:
    """The installed adapters, read once per process (see `refresh`)."""
    return _scan()


def refresh() -> bool:
    """Read the entry points again (after a package was installed into this process's environment).

    Returns True when the set of adapters changed; the config's equipment validator is then rebuilt.
    """
    before = registry()
    registry.cache_clear()
    after = registry()
    changed = before.specs.keys() != after.specs.keys() or any(
        before.specs[n] is not after.specs[n] for n in after.specs
    )
    if changed:
        from emsedge.config import Settings  # noqa: PLC0415

        Settings.model_rebuild(force=True)
    return changed


def spec_for(name: str) -> AdapterSpec[Any]:
    """The spec registered as `name`; KeyError (with what is installed) when there is none."""
    reg = registry()
    spec = reg.specs.get(name)
    if spec is None:
        if name in reg.broken:
            raise KeyError(f"adapter {name!r} cannot be loaded: {reg.broken[name]}")
        raise KeyError(f"no adapter named {name!r} (installed: {', '.join(reg.specs) or 'none'})")
    return spec


__all__ = ["GROUP", "Registry", "refresh", "registry", "spec_for"]
