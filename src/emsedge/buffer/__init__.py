"""Durable store-and-forward buffer: every message is on disk before anyone tries to publish it.

Design
======
The buffer is a transactional queue in one SQLite file (stdlib `sqlite3`, WAL mode), in the spirit of
Telegraf's output buffer: `append` (durable when it returns), `lease` (hand a batch to one output; the
records stay on disk), then `settle(lease, acked, retry, dead)` in ONE transaction: delivered (deleted
once every output acked them), back to the queue (`attempts + 1`), or poison (moved to `dead_letters`,
counted, announced). It is write-through: the runtime appends *every* record, link up or down, so there is
no "start buffering when the link drops" moment that could lose data.

* **One owner.** One thread (`emsedge-buffer-owner`, started and joined by `Buffer.run`) owns the SQLite
  connection, the seq sidecar and every counter (`store.Store`). It is fed by a command queue: append
  batches, lease, settle, count_loss, begin_replay, housekeeping, open/close, run strictly in order, one at a
  time, so nothing needs a lock. After each command (and at the start of each, with `writer_busy_since`
  set) it publishes an immutable `BufferStats` snapshot; the event loop only reads that snapshot
  (`stats()` is one attribute load and never waits for the disk). A command's caller waits (shielded) for
  its one round trip: a lease that was handed out is always received.
* **Group commit.** `append()` puts its records on a bounded in-memory queue and waits; the writer task on
  the loop takes everything queued (and, when several producers are queueing, gathers more for up to
  `linger`; at most `batch_max` records) and sends it to the owner as ONE command = ONE transaction, and
  every waiter wakes after COMMIT. When the queue is full, `append()` waits: a slow or failing disk slows
  the producers down instead of growing memory. A producer cancelled while it waits for room leaves nothing
  behind (`stats().queued` does not keep counting it).
  Who may overlap work with a commit, and who must wait for it: a *polled* source (Modbus, OPC UA reads)
  deletes nothing on our word, so the scheduler (`emsedge.scheduler`) starts the next poll while the previous
  poll's `append` is committing: one poll and one commit in flight per machine, never more (the next emit
  waits for the previous one, so a slow disk or a full buffer still stops polling, counted as skipped
  cycles). Polls of all machines that wait at the same moment share one transaction and one fsync. A source
  that deletes on our word (an HSMS S6F12 reply, a result file moved to its archive) acknowledges only after
  its own `append` returned, whatever else is in flight.
* **Identity.** The owner assigns each record a uuid4 `id` (or the `message_id` the record carries: a
  source that re-emits the same data after a crash names it with the same id, see `schema.Record`) and
  the next per-gateway `seq`, encodes the payload once (`schema.encode`) and stores the bytes.
* **Own ids are stored once.** A record carrying its own id is looked up in `emitted_ids` (one indexed
  query per batch, only when the batch has such a record) and its id inserted there in the same
  transaction as the rows; a record whose id is already there (or earlier in the same batch) is
  suppressed: not stored, no seq (so no gap), counted (`AppendResult.duplicates`,
  `BufferStats.duplicates_suppressed`, one debug line), and `append` returns normally, since the first
  copy is durable. This holds after a restart and after the first copy was delivered and deleted, so a
  source that re-emits after a crash (a result file read again before its ledger row was written) sends
  nothing twice. Ids are forgotten after `ID_RETENTION` (30 days on the buffer clock; pruned by
  housekeeping, or inside an append of ids, at most once per `ID_PRUNE_INTERVAL`); older re-drops are the
  source's business (the result_files ledger). Telemetry has no own id: no look-up, no extra row.
* **Seq.** `seq` is kept in `meta.next_seq`, updated in the same transaction as the rows, so it is
  strictly increasing across restarts and never reused even when every row was deleted. A failed
  transaction is rolled back and its seqs are reused by the retry, so a subscriber never sees a gap that
  is not a real (and announced) loss.
* **Seq sidecar.** `<path>.seq` holds a reservation R >= every seq ever committed, written and fsynced
  *before* a commit would pass it (in steps of `SEQ_RESERVE_STEP`). When the database is missing or was
  moved aside as corrupt, the fresh one starts at R: seqs jump (the lost range is a real gap) but never
  go back. The sidecar also carries an exclusive `flock`: two gateways cannot share one buffer.
* **Outputs.** A record is delivered by every named output (`outputs=("mqtt",)` today). Each output has
  its own lease cursor, leases, acks and replay mark. With one output an ack deletes the row; with several,
  an ack is a row in `acks` until the last output acked, then the record and its acks go in one transaction.
  A dead letter (refused for good by one output) removes the record for all outputs.
* **Replay.** An output's replay mark is the highest seq appended when its link last (re)connected
  (`begin_replay(output)`); at open it is the highest seq so far, so everything found on disk is backlog.
  Records with `seq <= mark` are backlog and leave with `"replayed": true` (`schema.mark_replayed`; `ts`
  is untouched). With `replay_rate` set, live records are leased first and the backlog only at that rate
  (token bucket, burst of one second), so a long outage neither starves live monitoring nor floods the
  broker; with `replay_rate: null` leasing is strictly oldest first. Every lease is bounded in count AND
  in payload bytes (`max_inflight_bytes`, at least one record), so memory during a drain is bounded
  whatever the message size.
* **Bounded disk.** Each row's `size` (payload + topic + id + equipment + ts + `ROW_OVERHEAD`) is counted;
  after each insert the oldest rows are evicted until the total is <= `max_bytes`, and rows older than
  `max_age` are evicted from the head. Below `min_free_bytes` of free disk (unless the file's own free
  pages can take the batch) the writer holds the batch and `append` turns into back-pressure; on a full
  disk or an unwritable file the owner logs one error, the batch stays in memory and is retried with capped
  backoff, and one line is logged when it recovers.
* **Loss accounting.** Every sanctioned loss (eviction by `max_bytes` or `max_age`, a dead letter, a record
  larger than the broker's Maximum Packet Size refused at append time (`too_large`; it still gets a seq),
  a record the encoder raises on (`unprocessable`: undecoded bytes, nesting, integers over 64 bits; its bad
  readings, or an `unprocessable` event, go out in its place and the rest of the batch commits: poison never
  stops the writer), and `count_loss()` reports from adapters, e.g. an OPC UA queue overflow) increments the durable
  cumulative counter `losses(equipment, reason)` in the same transaction as the loss. These counters live
  outside the evictable records and are never reset (not by a restart, not by `purge`).
* **Loss announcements.** The same transaction merges the loss into the open `buffer_dropped`
  announcement: a *pinned* row in `records` (never evicted, never dead-lettered, not counted in
  `max_bytes`) carrying `count`, `by_equipment`, `reason`, `dropped_seqs` (`[[first, last], ...]`, the seqs
  gone), `dropped_total` and `dropped_total_by_equipment` (the cumulative counters at the time of the last
  merge). Announcements are gateway-wide (equipment `_gateway`, like before) because one eviction takes
  a prefix across every piece of equipment; per-equipment counts are inside. An announcement is merged
  while no output has leased or acked it; an output takes it once it is `ANNOUNCE_INTERVAL` old or as soon
  as its link (re)connected, so an outage of any length produces one announcement (plus one per
  `ANNOUNCE_MAX_RANGES` ranges), and a lasting loss at most one per interval. Its own seq is allocated when
  it opens. Reconciliation rule for MES: every seq is either received or inside exactly one announcement's
  `dropped_seqs` (see docs/mqtt-contract.md).
* **Ages.** Eviction by `max_age` and the oldest-age figures use the *buffer clock*: the monotonic clock
  plus an anchor persisted in `meta.clock` at every commit, so a wall-clock step (NTP) changes nothing.
  Each row stores its `age_base` (buffer clock at append) beside its wall time `created` (kept for
  payload latency). Across a restart or a reboot the buffer clock continues from the last committed value:
  time the gateway was not running does not age the records (a reboot never evicts by age on its own; the
  records age again from the moment the gateway runs). Format-1 rows get their age from the wall clock once,
  at the upgrade.
* **Corruption.** A file SQLite calls "not a database" or "malformed" at open is renamed to
  `<path>.corrupt-<UTC time>` (with its -wal/-shm) with one error line, and a fresh file is started
  (seqs continue from the sidecar). An existing file that cannot be opened for writing is served read-only
  (the backlog drains) while appends wait.

Errors (`emsedge.buffer.errors`, all subclasses of `emsedge.errors.BufferError`): `BufferInUse`,
`BufferUnwritable` at open and `BufferFormatError` end the gateway at start; `BufferOwnerDied` (a bug in the
owner thread) ends it while running; `BufferClosed` is raised to callers before `run()` or during shutdown;
`BufferCorrupt` is handled (move aside); full or read-only disks are back-pressure, never raised.

On-disk format (format 2; a format-1 file is upgraded in place, in one transaction, at open)
==========================================================================================
::

    meta(key TEXT PRIMARY KEY, value)             -- format=2, gateway, next_seq, dead_letters_total, clock
    records(seq INTEGER PRIMARY KEY,              -- rowid: append order
            id TEXT, topic TEXT, equipment TEXT, ts TEXT, created REAL, attempts INTEGER,
            size INTEGER, payload BLOB,           -- payload = schema.encode(...) without the replayed flag
            age_base REAL,                        -- buffer clock at append (format 2)
            pinned INTEGER, note TEXT)            -- 1 + JSON state for a pending loss announcement
    acks(output TEXT, seq INTEGER)                -- acked by this output, waiting for the others
    losses(equipment TEXT, reason TEXT, count INTEGER)   -- cumulative, never evicted (format 2)
    dead_letters(seq INTEGER PRIMARY KEY, id, topic, equipment, ts, created, attempts, size, payload,
                 reason TEXT, dead_at REAL)      -- the newest DEAD_LETTER_KEEP rows are kept
    emitted_ids(id TEXT PRIMARY KEY, at REAL)     -- own ids appended (buffer clock), kept ID_RETENTION;
                                                  -- indexed by `at`; kept by `purge`

A format-2 file written before `emitted_ids` existed gains it (CREATE TABLE IF NOT EXISTS, in the one
schema transaction at open); an older emsedge ignores the table, so the format number did not change.

Format 1 had `evictions(equipment, count)`; the upgrade moves those counts to `losses` with reason
`evicted` and the dead-letter total to `losses` with reason `dead_letter`.

Invariants
==========
1. `append` returns only after COMMIT (with `sync: full` the commit is fsynced; with `normal` a power cut
   may lose the last commits, never corrupt the file). Records with a seq <= a returned seq are durable.
2. `seq` is strictly increasing per buffer file and across restarts; committed seqs are never reused.
   An own id (`Record.message_id`) gets at most one seq while it is in `emitted_ids`.
3. A record leaves `records` only when every output acked it, by eviction or as a dead letter, and the last
   two increment `losses` and an announcement's `dropped_seqs` in the same transaction:
   seqs allocated = delivered + announced as dropped + present (records and announcements).
4. Eviction always removes a prefix of unpinned rows in seq order (oldest first); after each write
   transaction the sum of unpinned `size` is <= `max_bytes`.
5. A record is in at most one live lease per output; `lease` never hands out a record its output holds
   until it is settled for retry or the process restarts. Lease order is oldest first within each class
   (live, backlog). Leased records may still be evicted; settling them is then a no-op.
6. Only the owner thread reads or writes the connection and the counters; `BufferStats` is immutable.
"""

from __future__ import annotations

from emsedge.buffer.core import HOUSEKEEPING_INTERVAL, QUEUE_APPENDS, Buffer
from emsedge.buffer.errors import (
    BufferClosed,
    BufferCorrupt,
    BufferError,
    BufferFormatError,
    BufferFull,
    BufferInUse,
    BufferOwnerDied,
    BufferUnwritable,
)
from emsedge.buffer.model import (
    REASON_DEAD_LETTER,
    REASON_MAX_AGE,
    REASON_MAX_BYTES,
    REASON_TOO_LARGE,
    REASON_UNPROCESSABLE,
    AppendResult,
    BufferStats,
    Lease,
    OutputStats,
    StoredMessage,
)
from emsedge.buffer.offline import export, file_stats, purge
from emsedge.buffer.store import ANNOUNCE_INTERVAL, FORMAT_VERSION, ID_RETENTION, ROW_OVERHEAD, SEQ_RESERVE_STEP

__all__ = [
    "ANNOUNCE_INTERVAL",
    "FORMAT_VERSION",
    "HOUSEKEEPING_INTERVAL",
    "ID_RETENTION",
    "QUEUE_APPENDS",
    "REASON_DEAD_LETTER",
    "REASON_MAX_AGE",
    "REASON_MAX_BYTES",
    "REASON_TOO_LARGE",
    "REASON_UNPROCESSABLE",
    "ROW_OVERHEAD",
    "SEQ_RESERVE_STEP",
    "AppendResult",
    "Buffer",
    "BufferClosed",
    "BufferCorrupt",
    "BufferError",
    "BufferFormatError",
    "BufferFull",
    "BufferInUse",
    "BufferOwnerDied",
    "BufferStats",
    "BufferUnwritable",
    "Lease",
    "OutputStats",
    "StoredMessage",
    "export",
    "file_stats",
    "purge",
]
