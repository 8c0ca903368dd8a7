"""Fault injection against the real daemon: broker outages, SIGKILL, cut and stalled links.

Each test runs `emsedge run` as a subprocess polling a real Modbus equipment process every 50 ms, and a
checking subscriber on a broker with persistence (its session survives broker restarts). The check is
always the same: from the first `seq` received up to the last one the gateway assigned (read from its
buffer file after a clean stop, so loss at the tail counts), every seq was delivered or is still buffered.
Duplicates are allowed (at-least-once) and reported. Each test prints a FAULT line for the closing note's
table. Sleeps only shape a fault (how long a broker stays down); every check waits on observable state.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from support import Mosquitto, Subscriber, seq_report
from support.daemon import Daemon, Equipment, buffer_seqs, gateway_config, wait_until
from support.proxy import LinkProxy

from emsedge.buffer import BufferError, file_stats

# Real daemons started again and again: on a loaded machine a test takes several times its quiet length,
# and its own waits already have deadlines.
pytestmark = pytest.mark.timeout(600)


def _data(checker: Subscriber) -> list[dict]:
    return [p for p in checker.payloads() if "seq" in p]


def _report(name: str, checker: Subscriber, tmp_path: Path, recovery_s: float | None = None,
            first: int | None = None) -> tuple[list[int], int, list[int]]:
    """Seqs delivered, duplicates, and missing up to the last seq the (stopped) gateway assigned."""
    last, waiting = buffer_seqs(tmp_path / "buffer.db")
    unique, dupes, missing = seq_report(_data(checker), first=first, last=last, accounted=waiting)
    gaps = [b - a - 1 for a, b in pairwise(unique) if b - a > 1]
    print(
        f"FAULT {name}: produced={last - unique[0] + 1 if unique else 0} delivered={len(unique)} "
        f"still_buffered={len(waiting)} duplicates={dupes} max_gap={max(gaps, default=0)} recovery_s={recovery_s}"
    )
    return unique, dupes, missing


def _drained(daemon: Daemon, checker: Subscriber) -> None:
    """Stop cleanly (the gateway publishes what is buffered) and wait until the subscriber has it all."""
    assert daemon.stop() == 0, daemon.log()[-3000:]
    checker.sync()


def _start(tmp_path: Path, daemons: list[Daemon], url: str | list[str], equipment: Equipment, **over: object) -> Daemon:
    daemon = Daemon(gateway_config(tmp_path, url, equipment.port, **over), tmp_path / "daemon.log")
    daemon.start()
    daemons.append(daemon)
    return daemon


def _evicted(db: Path) -> int:
    """Records the daemon's buffer evicted so far (0 before the file exists)."""
    try:
        return int(file_stats(db)["evicted_total"])
    except BufferError:
        return 0


def _wait_for_data(checker: Subscriber, n: int, timeout: float = 60.0) -> None:
    wait_until(lambda: len(_data(checker)) >= n, timeout)


def _wait_past(checker: Subscriber, margin: int, timeout: float) -> None:
    """Wait until the subscriber holds a seq `margin` past the highest it has now (the backlog arrived)."""
    before = max((p["seq"] for p in _data(checker)), default=0)
    wait_until(lambda: any(p["seq"] > before + margin for p in _data(checker)), timeout)


def test_broker_outage_loses_no_sequence_numbers(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon]
) -> None:
    daemon = _start(tmp_path, daemons, durable_broker.url, equipment)
    _wait_for_data(checker, 10)
    durable_broker.stop()
    time.sleep(3)
    durable_broker.start()
    restarted = time.monotonic()
    _wait_past(checker, 60, 60)
    recovery = round(time.monotonic() - restarted, 2)
    _drained(daemon, checker)
    unique, _, missing = _report("broker down 3 s", checker, tmp_path, recovery)
    assert missing == []
    assert len(unique) > 60  # 3 s at 20 polls/s were buffered and delivered
    assert any(p.get("replayed") for p in _data(checker)), "the backlog was not marked replayed"


def test_sigkill_while_broker_is_down_then_restart_leaves_no_gap(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon]
) -> None:
    daemon = _start(tmp_path, daemons, durable_broker.url, equipment)
    _wait_for_data(checker, 10)
    durable_broker.stop()
    time.sleep(1.5)
    daemon.kill()
    durable_broker.start()
    restarted = time.monotonic()
    again = _start(tmp_path, daemons, durable_broker.url, equipment)
    _wait_past(checker, 40, 60)
    recovery = round(time.monotonic() - restarted, 2)
    _drained(again, checker)
    unique, _, missing = _report("SIGKILL while broker down", checker, tmp_path, recovery)
    assert missing == []
    assert unique[-1] - unique[0] > 40


# Three rounds of each phase in the default suite (about 30 s); the soak run repeats them twenty times.
@pytest.mark.parametrize("rounds", [9, pytest.param(60, marks=pytest.mark.soak)])
def test_repeated_sigkill_during_publish_replay_and_outage_leaves_no_gap(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon],
    rounds: int,
) -> None:
    rng = random.Random(20261124)
    phases = ["publish", "outage", "replay"]
    for i in range(rounds):
        daemon = _start(tmp_path, daemons, durable_broker.url, equipment)
        # This daemon is up and delivering (running, then ten new seqs arrived) before its fault starts,
        # however slow the machine: every round delivers at least ten seqs. (New seqs alone can be the
        # killed one's, queued in the broker for the checker while the broker restarted.)
        daemon.wait_running()
        _wait_past(checker, 10, 60)
        phase = phases[i % 3]
        if phase == "publish":
            time.sleep(rng.uniform(0.1, 0.6))
        elif phase == "outage":
            durable_broker.stop()
            time.sleep(rng.uniform(0.3, 0.8))
        else:  # build a backlog, bring the broker back and kill in the middle of the replay
            durable_broker.stop()
            time.sleep(rng.uniform(0.5, 1.0))
            durable_broker.start()
            time.sleep(rng.uniform(0.1, 0.4))
        daemon.kill()
        if durable_broker.process is None:
            durable_broker.start()
    final = _start(tmp_path, daemons, durable_broker.url, equipment)
    final.wait_running()
    _wait_past(checker, 20, 60)
    _drained(final, checker)
    unique, _, missing = _report(f"SIGKILL x{rounds} (publish/outage/replay)", checker, tmp_path)
    assert missing == []
    assert len(unique) > 10 * rounds


def _link_fault(
    tmp_path: Path, daemons: list[Daemon], broker: Mosquitto, equipment: Equipment, checker: Subscriber,
    fault: Callable[[LinkProxy, Daemon], None],
) -> float:
    """Run the daemon through a proxy, apply `fault`, restore the link; returns the recovery time."""
    proxy = LinkProxy(broker.port)
    proxy.start()
    try:
        daemon = _start(tmp_path, daemons, proxy.url, equipment)
        _wait_for_data(checker, 10)
        fault(proxy, daemon)
        proxy.restore()
        restored = time.monotonic()
        _wait_past(checker, 40, 60)
        recovery = round(time.monotonic() - restored, 2)
        _drained(daemon, checker)
    finally:
        proxy.close()
    return recovery


def test_cut_link_loses_nothing_and_recovers(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon]
) -> None:
    def cut(proxy: LinkProxy, daemon: Daemon) -> None:
        proxy.cut()
        time.sleep(2)

    recovery = _link_fault(tmp_path, daemons, durable_broker, equipment, checker, cut)
    _, _, missing = _report("link cut 2 s", checker, tmp_path, recovery)
    assert missing == []


def test_stalled_link_is_noticed_by_keepalive_and_loses_nothing(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon]
) -> None:
    def stall(proxy: LinkProxy, daemon: Daemon) -> None:
        connections = proxy.connections
        proxy.stall()  # no RST, no FIN: only the MQTT keepalive (2 s here) can notice
        wait_until(lambda: proxy.connections > connections or "lost" in daemon.log().lower(), 30)

    recovery = _link_fault(tmp_path, daemons, durable_broker, equipment, checker, stall)
    _, _, missing = _report("link stalled (keepalive)", checker, tmp_path, recovery)
    assert missing == []


def test_broker_restart_without_persistence_while_messages_are_in_flight(
    tmp_path: Path, equipment: Equipment, daemons: list[Daemon]
) -> None:
    # The gateway's broker forgets everything while PUBLISHes are held in flight by a stalled link. The
    # checker subscribes again to the restarted broker before the link comes back: every seq after the
    # last one the old broker accepted (the first of them was in flight) must be re-sent and arrive.
    volatile = Mosquitto(workdir=tmp_path, persistence=False)
    volatile.start()
    proxy = LinkProxy(volatile.port)
    proxy.start()
    checker = Subscriber(volatile.port, topic="ems/#")
    try:
        daemon = _start(tmp_path, daemons, proxy.url, equipment)
        _wait_for_data(checker, 10)
        proxy.stall()  # PUBLISHes leave the gateway but never reach the broker: in flight, unacknowledged
        wait_until(lambda: proxy.held_upstream > 0, 30)
        checker.sync()  # the checker holds everything the old broker accepted
        accepted = max(p["seq"] for p in _data(checker))
        checker.close()
        volatile.stop(kill=True)
        volatile.start()
        checker = Subscriber(volatile.port, topic="ems/#")
        proxy.cut()
        proxy.restore()
        wait_until(lambda: len(_data(checker)) > 40, 60)
        _drained(daemon, checker)
        unique, _, missing = _report("broker restart without persistence", checker, tmp_path, first=accepted + 1)
        assert accepted + 1 in unique  # the message in flight at the restart was re-sent
        assert missing == []
    finally:
        checker.close()
        proxy.close()
        volatile.stop()


def test_clean_stop_publishes_offline_status_and_exits_zero(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon]
) -> None:
    daemon = _start(tmp_path, daemons, durable_broker.url, equipment)
    wait_until(lambda: any(p.get("state") == "online" for p in checker.payloads("/_gateway/status")), 60)
    daemon.signal(signal.SIGTERM)
    assert daemon.process is not None and daemon.process.wait(20) == 0
    wait_until(lambda: any(p.get("state") == "offline" for p in checker.payloads("/_gateway/status")), 30)


def test_full_buffer_drops_oldest_and_announces_it_with_buffer_dropped(
    tmp_path: Path, durable_broker: Mosquitto, checker: Subscriber, equipment: Equipment, daemons: list[Daemon]
) -> None:
    durable_broker.stop()  # everything produced now has to wait in a buffer too small to hold it
    daemon = _start(tmp_path, daemons, durable_broker.url, equipment, buffer={"max_bytes": "40KiB"})
    # ~700-byte telemetry every 50 ms: 40 KiB overflow within seconds (waited for, not slept: a busy machine
    # polls slower); the announcements are never evicted, whatever the outage's length
    wait_until(lambda: _evicted(tmp_path / "buffer.db") > 0, 60)
    durable_broker.start()
    wait_until(lambda: any(p.get("event", {}).get("type") == "buffer_dropped" for p in _data(checker)), 60)
    _drained(daemon, checker)
    data = _data(checker)
    dropped = [p["event"] for p in data if p.get("event", {}).get("type") == "buffer_dropped"]
    counted = sum(d["count"] for d in dropped)
    assert counted > 0 and all(d["by_equipment"].get("reflow-1") for d in dropped)
    last, waiting = buffer_seqs(tmp_path / "buffer.db")
    unique, _, missing = seq_report(data, last=last, accounted=waiting)
    # Every seq from the first delivered to the last assigned (the tail included) is delivered or counted
    # as dropped. (Seqs evicted before the first delivered one are not reconciled yet: issue 11, item 1.)
    assert len(missing) <= counted
    assert unique[0] > 1  # the oldest went first
    print(f"FAULT buffer full (40 KiB, broker down until it evicted): delivered={len(unique)} dropped={counted}")
