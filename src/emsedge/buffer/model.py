"""The values that cross the buffer's boundary: immutable, cheap to copy, no behaviour beyond arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

EVICTION_REASONS = ("max_bytes", "max_age", "evicted")
"""Loss reasons that are evictions (`evicted` is the reason of counts migrated from format 1)."""
REASON_MAX_BYTES = "max_bytes"
REASON_MAX_AGE = "max_age"
REASON_DEAD_LETTER = "dead_letter"
REASON_TOO_LARGE = "too_large"
REASON_UNPROCESSABLE = "unprocessable"
"""A record the encoder refused (undecoded bytes, nesting, huge integers): sent as bad readings or an
`unprocessable` event in its place (or refused when even that fails), counted and announced."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A record as an output sees it: final topic and payload bytes (replayed flag already applied).

    `announcement` marks a `buffer_dropped` loss announcement (a pinned row: never evicted, never
    dead-lettered; an output that cannot deliver it retries it).
    """

    seq: int
    id: str
    topic: str
    payload: bytes
    equipment: str
    created: float
    attempts: int
    replayed: bool
    announcement: bool = False


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one `append` did: `accepted` records committed, `evicted` records dropped to make room.

    Evictions of one write transaction are reported once, in the result of the first append of that
    transaction, so summing `evicted` over all results never double counts. `refused` records were
    larger than `max_message_bytes` (the broker's Maximum Packet Size): they got a seq, were not stored,
    and are counted and announced as `too_large`. `duplicates` records carried their own id
    (`Record.message_id`) and that id had been appended before (within `store.ID_RETENTION`): they were not
    stored and got no seq, because their first copy is durable already. `accepted` counts neither.
    """

    accepted: int
    evicted: int
    evicted_by_equipment: dict[str, int]
    evicted_first_ts: str | None
    evicted_last_ts: str | None
    refused: int = 0
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A batch handed to one output; its records stay on disk until settled."""

    id: int
    output: str
    messages: list[StoredMessage]

    @property
    def bytes(self) -> int:
        return sum(len(m.payload) for m in self.messages)


@dataclass(frozen=True, slots=True)
class OutputStats:
    """Per-output leasing state (see `BufferStats.outputs`)."""

    leased: int = 0
    leased_bytes: int = 0
    backlog: int = 0
    """Records at or below this output's replay mark not yet acked by it."""
    unleased_live: int = 0
    unleased_backlog: int = 0
    announcements_due: int = 0
    replay_tokens: float | None = None
    """Replay tokens at `tokens_at` (None without `replay_rate`)."""
    tokens_at: float = 0.0
    next_announcement_in: float | None = None
    """Seconds (from `observed_at`) until a pending announcement not yet due becomes due."""
    observed_at: float = 0.0
    """Monotonic time of this snapshot."""


@dataclass(frozen=True, slots=True)
class BufferStats:
    """An immutable snapshot published by the owner thread after every command (and at its start).

    Reading it is one attribute load: it never waits for the disk.
    """

    count: int
    bytes: int
    oldest_created: float | None
    """Wall time the oldest record was appended (for payloads; ages use `oldest_age_s`)."""
    next_seq: int
    evicted_total: int
    evicted_by_equipment: dict[str, int]
    dead_letters: int
    leased: int
    backlog: int
    writable: bool
    last_error: str | None
    queued: int = 0
    """Records waiting in memory for the writer (grows while the disk is full, bounded)."""
    dropped_total: int = 0
    """Every record lost by a sanctioned policy, cumulative over the life of the file (never reset)."""
    dropped_by_equipment: dict[str, int] = field(default_factory=dict)
    losses: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """equipment -> reason -> cumulative count (eviction, dead letters, adapter reports, too large)."""
    announcements_pending: int = 0
    oldest_age_base: float | None = None
    base_offset: float = 0.0
    """Buffer clock = monotonic clock + base_offset (see the package docstring, "Ages")."""
    writer_busy_since: float | None = None
    """Monotonic time the owner thread started its current disk command; None when idle."""
    outputs: Mapping[str, OutputStats] = field(default_factory=dict)
    duplicates_suppressed: int = 0
    """Records not stored because their own id had been appended before (since the gateway started)."""

    def oldest_age_s(self, now: float) -> float:
        """Age of the oldest record by the buffer clock (`now` is the monotonic clock); 0 when empty."""
        if self.oldest_age_base is None:
            return 0.0
        return max(now + self.base_offset - self.oldest_age_base, 0.0)

    def writer_stuck_for(self, now: float) -> float:
        """Seconds the current disk command has been running (0 when idle)."""
        return 0.0 if self.writer_busy_since is None else max(now - self.writer_busy_since, 0.0)
