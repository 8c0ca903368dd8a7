"""The metas of compact telemetry (`mqtt.telemetry_format: compact`): what every reading of one equipment
has in common (units, data types), by equipment and by id, durable.

With compact telemetry the buffer stores each telemetry record written against its equipment's current
meta (`MetaEncoder`, `schema.encode_compact`), and the message names that meta by id. Whatever leaves the
buffer later (after a reload changed the signals, after a restart with another config) must still find the
meta it was written against: `TelemetryMetas` writes each meta to `<buffer path>.metas/<id>.json` (content
addressed, written once, fsynced) before it becomes current, so no stored record can name a meta that is
not on disk.

Invariants:
* `set()` returns only after the meta is durable; only then does the encoder use it.
* A meta file is never rewritten (its name is the hash of its content); files of metas no longer current
  stay (one per distinct signal set the config ever had, a few tens of kB each) so any backlog finds its
  meta. Deleting the directory while a backlog exists makes that backlog undeliverable (it is dead-lettered,
  counted and announced, never sent without its units).
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import structlog

from emsedge.config import EquipmentBase
from emsedge.schema import Record, TelemetryMeta, encode_compact

log = structlog.get_logger("emsedge.telemetry_meta")


def meta_for(equipment: EquipmentBase) -> TelemetryMeta:
    """The meta of one equipment from its config: each configured signal's unit (and data type, if any)."""
    signals: dict[str, dict[str, str | None]] = {}
    for signal in equipment.configured_signals():
        entry: dict[str, str | None] = {"unit": signal.unit}
        data_type = getattr(signal, "type", None)
        if isinstance(data_type, str):
            entry["type"] = data_type
        signals[signal.name] = entry
    return TelemetryMeta.build(equipment.id, str(equipment.type), signals)


class TelemetryMetas:
    """Current meta per equipment (read by the buffer's writer thread) and every meta by id (on disk)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._current: dict[str, TelemetryMeta] = {}
        self._by_id: dict[str, TelemetryMeta] = {}

    @classmethod
    def beside(cls, buffer_path: Path | str) -> TelemetryMetas:
        return cls(Path(f"{buffer_path}.metas"))

    def current(self, equipment: str) -> TelemetryMeta | None:
        return self._current.get(equipment)

    def set(self, meta: TelemetryMeta) -> None:
        """Make `meta` its equipment's current meta, after writing it to disk (blocking: a small file)."""
        if meta.id not in self._by_id:
            self._write(meta)
            self._by_id[meta.id] = meta
        self._current[meta.equipment] = meta

    def remove(self, equipment: str) -> None:
        """The equipment left the config: its telemetry (none should follow) is encoded full."""
        self._current.pop(equipment, None)

    def lookup(self, meta_id: str) -> TelemetryMeta | None:
        """The meta with this id: in memory, or from disk (a backlog written under an earlier config)."""
        meta = self._by_id.get(meta_id)
        if meta is None and self.directory is not None and meta_id.isalnum():
            try:
                data = orjson.loads((self.directory / f"{meta_id}.json").read_bytes())
                meta = TelemetryMeta(str(data["equipment"]), str(data["equipment_type"]), dict(data["signals"]),
                                     meta_id)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("telemetry meta not found", meta=meta_id, error=str(exc))
                return None
            self._by_id[meta_id] = meta
        return meta

    def _write(self, meta: TelemetryMeta) -> None:
        if self.directory is None:
            return
        target = self.directory / f"{meta.id}.json"
        if target.exists():
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like the buffer's files
        tmp = target.with_suffix(".tmp")
        data = orjson.dumps({"equipment": meta.equipment, "equipment_type": meta.equipment_type,
                             "signals": meta.signals})
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class MetaEncoder:
    """The buffer's encoder with compact telemetry: `schema.encode_compact` against the current meta."""

    def __init__(self, metas: TelemetryMetas) -> None:
        self.metas = metas

    def __call__(self, record: Record, *, gateway: str, seq: int, message_id: str) -> bytes:
        return encode_compact(record, gateway=gateway, seq=seq, message_id=message_id,
                              meta=self.metas.current(record.equipment))
