"""A hypothesis state machine over the buffer, checked against a simple in-memory model.

Rules: append (with a small `max_bytes`, so evictions happen), lease, settle acked, settle retry,
begin_replay and crash-and-reopen (a copy of the database files taken by the owner thread between two
commands, as a power cut with `sync: full` would leave them, opened by a fresh Buffer). Invariants: no
acked record comes back, accepted = delivered + evicted + present, the byte cap holds, eviction is oldest
first, leases are oldest first and never overlap, seq never goes back, and every evicted seq is covered by
exactly one loss announcement (delivered or still pending), none by two.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from emsedge import schema
from emsedge.buffer import Buffer, Lease, StoredMessage, export
from emsedge.config import BufferConfig
from emsedge.topics import Topics

MAX_BYTES = 3000
EQUIPMENT = ["oven-1", "aoi-1", "spi-1"]


class BufferMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="buffer-sm-"))
        self.portal_cm = start_blocking_portal()
        self.portal: BlockingPortal = self.portal_cm.__enter__()
        self.generation = 0
        self.buf: Buffer
        self.task: Future[Any]
        self._start()
        # the model
        self.present: dict[int, str] = {}  # seq -> equipment, in seq order
        self.leases: dict[int, tuple[Lease, set[int]]] = {}
        self.acked: set[int] = set()
        self.evicted_seqs: set[int] = set()
        self.announced: list[int] = []  # dropped_seqs of delivered announcements, with repeats
        self.announcement_seqs: set[int] = set()
        self.accepted = 0
        self.delivered = 0
        self.evicted = 0
        self.mark = 0
        self.last_next_seq = 1

    @property
    def path(self) -> Path:
        return self.tmp / f"buffer-{self.generation}.db"

    def _start(self) -> None:
        cfg = BufferConfig(path=self.path, max_bytes=MAX_BYTES, min_free_bytes=0, linger=0, sync="normal")
        self.buf = Buffer(cfg, gateway="gw", topics=Topics("ems/p/smt/l"))
        self.task, _ = self.portal.start_task(self.buf.run)

    def leased_now(self) -> set[int]:
        return {s for _, seqs in self.leases.values() for s in seqs}

    # -- rules ---------------------------------------------------------------------------------------

    @rule(
        items=st.lists(st.tuples(st.sampled_from(EQUIPMENT), st.integers(0, 400)), min_size=1, max_size=6)
    )
    def append(self, items: list[tuple[str, int]]) -> None:
        first = self.buf.stats().next_seq
        records = [
            schema.telemetry(eq, "other", [schema.reading("s", "x" * n, ts="2026-01-01T00:00:00.000Z")])
            for eq, n in items
        ]
        result = self.portal.call(self.buf.append, records)
        assert result.accepted == len(records)
        for i, (eq, _) in enumerate(items):
            self.present[first + i] = eq
        self.accepted += len(records)
        # eviction is oldest first: the model drops the `evicted` lowest seqs
        dropped = list(self.present)[: result.evicted]
        expected_by_equipment: dict[str, int] = {}
        for seq in dropped:
            self.evicted_seqs.add(seq)
            eq = self.present.pop(seq)
            expected_by_equipment[eq] = expected_by_equipment.get(eq, 0) + 1
            for _, seqs in self.leases.values():
                seqs.discard(seq)
        assert result.evicted_by_equipment == expected_by_equipment
        self.evicted += result.evicted

    @rule(n=st.integers(1, 8))
    def lease(self, n: int) -> None:
        lease = self.portal.call(self.buf.lease, "mqtt", n)
        notes = [m for m in lease.messages if m.announcement]
        self.announcement_seqs |= {m.seq for m in notes}
        got = [m.seq for m in lease.messages if not m.announcement]
        assert lease.messages[: len(notes)] == notes  # due announcements go first
        busy = self.leased_now()
        expected = [s for s in self.present if s not in busy][: n - len(notes)]
        assert got == expected, (got, expected)
        assert not set(got) & self.acked
        assert all(m.replayed == (m.seq <= self.mark) for m in lease.messages if not m.announcement)
        if lease.messages:
            self.leases[lease.id] = (lease, {m.seq for m in lease.messages})

    def _delivered_announcement(self, message: StoredMessage) -> None:
        for first, last in json.loads(message.payload)["event"]["dropped_seqs"]:
            self.announced += list(range(first, last + 1))

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.leases)))
        lease, seqs = self.leases[lease_id]
        chosen = data.draw(st.lists(st.sampled_from(sorted(seqs)), unique=True, min_size=1)) if seqs else []
        self.portal.call(self.buf.settle, lease, chosen)
        by_seq = {m.seq: m for m in lease.messages}
        for seq in chosen:
            seqs.discard(seq)
            if by_seq[seq].announcement:
                self._delivered_announcement(by_seq[seq])
            elif self.present.pop(seq, None) is not None:
                self.delivered += 1
            self.acked.add(seq)
        if not seqs:
            del self.leases[lease_id]

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.leases)))
        lease, seqs = self.leases[lease_id]
        chosen = data.draw(st.lists(st.sampled_from(sorted(seqs)), unique=True, min_size=1)) if seqs else []
        self.portal.call(self.buf.settle, lease, (), chosen)
        seqs.difference_update(chosen)
        if not seqs:
            del self.leases[lease_id]

    @rule()
    def begin_replay(self) -> None:
        self.buf.begin_replay("mqtt")
        self.portal.call(self.buf.lease, "mqtt", 0)  # one round trip: the replay mark is set
        self.mark = self.buf.stats().next_seq - 1

    @precondition(lambda self: self.generation < 3)  # a few crashes per run leave room for long lease chains
    @rule()
    def crash_and_reopen(self) -> None:
        old = self.path
        self.generation += 1
        new = self.path

        def copy() -> None:  # in the owner thread, between two commands: what a power cut leaves
            for suffix in ("", "-wal", ".seq"):
                if Path(f"{old}{suffix}").exists():
                    shutil.copyfile(f"{old}{suffix}", f"{new}{suffix}")

        self.portal.call(self.buf._call, copy)
        self.task.cancel()
        self._start()
        self.leases.clear()
        self.mark = self.buf.stats().next_seq - 1  # everything found at open is backlog

    # -- invariants ----------------------------------------------------------------------------------

    @invariant()
    def counts_add_up(self) -> None:
        stats = self.buf.stats()
        assert stats.count == len(self.present)
        assert self.accepted == self.delivered + self.evicted + len(self.present)
        assert stats.bytes <= MAX_BYTES
        assert stats.leased == len(self.leased_now())

    @invariant()
    def every_evicted_seq_is_announced_exactly_once(self) -> None:
        pending: list[int] = []
        for row in export(self.path):
            if row["equipment"] == schema.GATEWAY_EQUIPMENT:
                for first, last in json.loads(row["payload"])["event"]["dropped_seqs"]:
                    pending += list(range(first, last + 1))
        covered = self.announced + pending
        assert len(covered) == len(set(covered))  # no seq announced twice
        assert set(covered) == self.evicted_seqs
        assert not set(covered) & set(self.present)

    @invariant()
    def the_file_holds_exactly_the_present_records(self) -> None:
        on_disk = [r["seq"] for r in export(self.path) if r["equipment"] != schema.GATEWAY_EQUIPMENT]
        assert on_disk == list(self.present)
        assert not set(on_disk) & self.acked

    @invariant()
    def seq_never_goes_back(self) -> None:
        next_seq = self.buf.stats().next_seq
        assert next_seq >= self.last_next_seq
        self.last_next_seq = next_seq

    def teardown(self) -> None:
        self.task.cancel()
        self.portal_cm.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)


BufferMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBufferAgainstModel = BufferMachine.TestCase
