"""The runtime: wiring only. One task group, start order, signals, reload, drain.

The pipeline, top to bottom:

    equipment ─ adapter ─> Normaliser ─> Buffer.append (durable) ─> Forwarder: lease ─> publish_batch ─> settle

Start order (each stage reports readiness through `TaskGroup.start()` before the next one starts):
buffer writer, then MQTT publisher and the forwarder, then the health/metrics listener and the systemd
watchdog, then every piece of equipment. `READY=1` goes to systemd once all of them started.

Stop (SIGTERM/SIGINT), in reverse: equipment stops polling; every record already handed to the buffer is
committed; the forwarder keeps publishing until the buffer is empty or `DRAIN_TIMEOUT` passes; the
publisher publishes the retained `offline` status and disconnects; the buffer writer closes the database.
Whatever was not delivered stays on disk and is replayed, oldest first, on the next start.

Isolation: each piece of equipment runs in its own cancel scope under `emsedge.supervisor`. A session
that ends is logged once, reported as `connection_lost` and retried with backoff (a permanent error at the
slowest rate, state `failed`); it never takes down the gateway or the other equipment. Reload (SIGHUP)
restarts only the equipment whose config changed.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from emsedge import __version__, schema
from emsedge.adapters import spec_for
from emsedge.adapters.base import Adapter, AdapterContext, CountLoss, Emit, EquipmentHealth, EquipmentState
from emsedge.buffer import Buffer, StoredMessage
from emsedge.config import EquipmentBase, Settings, load_config
from emsedge.errors import AdapterError, ConfigError
from emsedge.forward import Forwarder
from emsedge.looplag import LoopLag
from emsedge.normalise import Normaliser
from emsedge.publish.compact import CompactOutput, ExpandingOutput
from emsedge.publish.mqtt import MqttPublisher
from emsedge.schema import SCHEMA_STATUS, Record, utc_iso
from emsedge.service import GatewayState, SystemdNotifier, run_watchdog
from emsedge.state import MachineStates
from emsedge.supervisor import supervise_adapter
from emsedge.telemetry_meta import MetaEncoder, TelemetryMetas, meta_for
from emsedge.topics import Topics
from emsedge.web.model import LineModel

if TYPE_CHECKING:
    from emsedge.publish.cfx import CfxPublisher
    from emsedge.publish.cfx_listen import CfxDirectListener
    from emsedge.publish.cfx_requests import CfxRequestListener

log = structlog.get_logger("emsedge.runtime")

DRAIN_TIMEOUT = 5.0
"""Seconds a clean stop keeps publishing the backlog before it leaves the rest on disk."""


class _Unbuildable:
    """Stands in for an adapter whose factory raised: its only session fails for a permanent reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def session(self, ctx: AdapterContext) -> None:
        raise AdapterError(self.reason, transient=False)

    def offline_records(self, reason: str) -> Sequence[Record]:
        return ()


@dataclass
class _RunningEquipment:
    config: EquipmentBase
    scope: anyio.CancelScope
    stopped: anyio.Event = field(default_factory=anyio.Event)


class Gateway:
    """One gateway process: owns the buffer, the publisher and every adapter for its lifetime."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.topics = Topics(settings.topic_prefix)
        self.started_at = utc_iso()
        outputs = ("mqtt", "cfx") if settings.cfx is not None else ("mqtt",)
        self.compact_telemetry = settings.mqtt.telemetry_format == "compact"
        self.metas = TelemetryMetas.beside(settings.buffer.path)
        """Metas of compact telemetry: with `mqtt.telemetry_format: compact` the buffer stores telemetry
        compact against them; in either format a backlog stored compact (by an earlier run) finds its meta."""
        self.buffer = Buffer(settings.buffer, gateway=settings.gateway.id, topics=self.topics, outputs=outputs,
                             encode=MetaEncoder(self.metas) if self.compact_telemetry else schema.encode)
        self.publisher = MqttPublisher(
            settings.mqtt,
            client_id=settings.client_id,
            status_topic=self.topics.status,
            online_payload=lambda: self._status_payload("online"),
            offline_payload=lambda: self._status_payload("offline", cause="connection_lost"),
            stopped_payload=lambda: self._status_payload("offline", cause="stopped"),
        )
        self.state = GatewayState(
            gateway_id=settings.gateway.id,
            version=__version__,
            started_at=self.started_at,
            equipment={},
            equipment_info={},
            buffer_stats=self.buffer.stats,
            broker_connected=lambda: self.publisher.connected,
            broker_url=lambda: getattr(self.publisher, "current_url", None),
            broker_failovers=lambda: int(getattr(self.publisher, "failovers", 0)),
        )
        self.machine_states = MachineStates(settings.gateway.id, self.topics, self.publisher)
        self.compact = CompactOutput(self.publisher, self.metas, settings.gateway.id, self.topics)
        """Publishes each compact message's meta (retained) before the message; full messages pass through."""
        self.forwarder = Forwarder(
            self.buffer,
            self.compact,
            name="mqtt",
            qos=settings.mqtt.qos,
            window=settings.mqtt.max_inflight,
            max_inflight_bytes=int(settings.buffer.max_inflight_bytes),
            on_delivered=self._delivered,
        )
        self.cfx: CfxPublisher | None = None
        """The CFX output (`publish.cfx.CfxPublisher`) and its forwarder, when `cfx:` is configured."""
        self.cfx_forwarder: Forwarder | None = None
        self.cfx_requests: CfxRequestListener | None = None
        """The CFX request listener, when `cfx.requests` is configured."""
        self.cfx_listen: CfxDirectListener | None = None
        """The direct CFX request listener, when `cfx.listen` is configured."""
        if settings.cfx is not None:
            from emsedge.publish.cfx import CfxPublisher, handles_for  # noqa: PLC0415 - optional extra emsedge[cfx]

            handles = handles_for(
                settings.cfx, settings.gateway.site, settings.gateway.line,
                {e.id: e.cfx_handle for e in settings.equipment},
            )
            self.cfx = CfxPublisher(settings.cfx, handles)
            self.cfx_forwarder = Forwarder(
                self.buffer,
                ExpandingOutput(self.cfx, self.metas),
                name="cfx",
                qos=1,
                window=settings.cfx.window,
                max_inflight_bytes=int(settings.buffer.max_inflight_bytes),
            )
            self.state.cfx = self.cfx.snapshot
            if settings.cfx.requests is not None:
                from emsedge.publish.cfx_requests import CfxRequestListener  # noqa: PLC0415 - emsedge[cfx]

                self.cfx_requests = CfxRequestListener(settings.cfx, handles)
                self.cfx.requests_snapshot = self.cfx_requests.snapshot
            if settings.cfx.listen is not None:
                from emsedge.publish.cfx_listen import CfxDirectListener  # noqa: PLC0415 - emsedge[cfx]

                self.cfx_listen = CfxDirectListener(settings.cfx, handles)
                self.cfx.listen_snapshot = self.cfx_listen.snapshot
        self.loop_lag = LoopLag()
        self.state.loop_lag = lambda: (
            self.loop_lag.last_seconds, self.loop_lag.max_seconds, self.loop_lag.busy_max_seconds
        )
        self.line = LineModel()
        """What the status page shows, fed from the emit path after normalisation (never blocks it)."""
        self.notifier = SystemdNotifier()
        self._equipment: dict[str, _RunningEquipment] = {}
        self._equipment_tg: TaskGroup | None = None
        self._stop = anyio.Event()

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info(
            "starting", gateway=self.settings.gateway.id, version=__version__,
            equipment=len(self.settings.equipment), prefix=self.topics.prefix,
        )
        # Signals are taken from here on, before the buffer opens: a stop while machines are still being
        # connected is a clean stop too (queued until the handler runs), never a death by SIGTERM.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await self._run(signals, task_status)
        log.info("stopped", backlog=self.buffer.stats().count)

    async def _run(self, signals: AsyncIterator[int], task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as core:
            await core.start(self.buffer.run)
            async with anyio.create_task_group() as link:
                await link.start(self.publisher.run)
                await link.start(self.forwarder.run)
                if self.cfx is not None and self.cfx_forwarder is not None:
                    await link.start(self.cfx.run)
                    await link.start(self.cfx_forwarder.run)
                if self.cfx_requests is not None:
                    await link.start(self.cfx_requests.run)
                if self.cfx_listen is not None:
                    await link.start(self.cfx_listen.run)
                await link.start(self._publish_status)
                await link.start(self.machine_states.run)
                if self.settings.http.listen:
                    # Imported only when served: starlette and uvicorn cost ~0.2 s of start-up otherwise.
                    from emsedge.web.app import OutputSource, WebSources  # noqa: PLC0415
                    from emsedge.web.server import serve_http  # noqa: PLC0415

                    outputs = {"mqtt": OutputSource(
                        lambda: self.publisher.connected, lambda: self.forwarder.drain_rate, self.state.broker_url,
                    )}
                    if self.cfx is not None and self.cfx_forwarder is not None and self.settings.cfx is not None:
                        cfx, cfx_forwarder, cfx_url = self.cfx, self.cfx_forwarder, self.settings.cfx.broker
                        outputs["cfx"] = OutputSource(
                            lambda: cfx.connected, lambda: cfx_forwarder.drain_rate, lambda: cfx_url
                        )
                    sources = WebSources(
                        self.state, self.line, drain_rate=lambda: self.forwarder.drain_rate,
                        replay_rate=self.settings.buffer.replay_rate, buffer_path=self.settings.buffer.path,
                        outputs=outputs,
                    )
                    await link.start(
                        partial(serve_http, config=self.settings.http, sources=sources), self.settings.http.listen,
                        self.state,
                    )
                await link.start(run_watchdog, self.notifier, self.state)
                link.start_soon(self._handle_signals, signals)
                async with anyio.create_task_group() as equipment_tg:
                    self._equipment_tg = equipment_tg
                    for equipment in self.settings.equipment:
                        await self._start_equipment(equipment)
                    await link.start(self.loop_lag.run)  # after start-up (imports, first connects): steady state
                    self.notifier.ready()
                    self.notifier.status(self.state.status_line())
                    task_status.started()
                    log.info("running", equipment=len(self._equipment))
                    await self._stop.wait()
                    self.notifier.stopping()
                    log.info("stopping: equipment first, then drain the buffer")
                    equipment_tg.cancel_scope.cancel()
                await self._drain()
                link.cancel_scope.cancel()
            core.cancel_scope.cancel()

    def request_stop(self) -> None:
        self._stop.set()

    async def _handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await self.reload()
            else:
                log.info("signal received", signal=signal.Signals(signum).name)
                self.request_stop()
                return  # a second SIGTERM while draining stays queued: the drain has its own bound

    async def _drain(self) -> None:
        """Publish what can be published within DRAIN_TIMEOUT; the rest stays on disk."""
        if self.cfx_forwarder is not None:
            async with anyio.create_task_group() as drains:
                drains.start_soon(self.cfx_forwarder.drain, DRAIN_TIMEOUT)
                left = await self.forwarder.drain(DRAIN_TIMEOUT)
        else:
            left = await self.forwarder.drain(DRAIN_TIMEOUT)
        if left:
            log.info("drain ended", left_on_disk=left)

    # ----------------------------------------------------------------------------------------------
    # Equipment supervision

    async def _start_equipment(self, equipment: EquipmentBase) -> None:
        assert self._equipment_tg is not None
        health = self.state.equipment.setdefault(equipment.id, EquipmentHealth())
        self.state.equipment_info[equipment.id] = (equipment.type, equipment.adapter)
        self.machine_states.add(equipment.id, equipment.type, health)
        if self.compact_telemetry:
            await anyio.to_thread.run_sync(self.metas.set, meta_for(equipment))  # durable before any record
            self.compact.keep(equipment.id)
        if not equipment.enabled:
            health.state = EquipmentState.DISABLED
            log.info("equipment disabled in config", equipment=equipment.id)
            return
        running = _RunningEquipment(equipment, anyio.CancelScope())
        self._equipment[equipment.id] = running
        await self._equipment_tg.start(self._supervise, running, health)

    async def _stop_equipment(self, equipment_id: str) -> None:
        running = self._equipment.pop(equipment_id, None)
        if running is not None:
            running.scope.cancel()
            await running.stopped.wait()

    async def _supervise(
        self, running: _RunningEquipment, health: EquipmentHealth, *, task_status: TaskStatus[None]
    ) -> None:
        """Run one adapter under the supervisor until stopped; nothing it raises reaches the gateway."""
        equipment = running.config
        ctx = AdapterContext(
            equipment=equipment, emit=self._emitter(Normaliser(equipment)), health=health,
            loss_counter=self._loss_counter(equipment.id), state_dir=self.settings.buffer.path.parent,
            gateway=self.settings.gateway.id,
        )
        task_status.started()
        try:
            with running.scope:
                await supervise_adapter(self._build_adapter(ctx), ctx)
        finally:
            running.stopped.set()

    @staticmethod
    def _build_adapter(ctx: AdapterContext) -> Adapter:
        name = ctx.equipment.adapter
        try:
            return spec_for(name).build(ctx.equipment, ctx)
        except Exception as exc:  # a broken plugin is one failed machine, not a failed gateway
            return _Unbuildable(f"cannot build the {name!r} adapter: {type(exc).__name__}: {exc}")

    def _emitter(self, normaliser: Normaliser) -> Emit:
        async def emit(records: Sequence[Record]) -> None:
            normalised = normaliser.process(records)
            if self.settings.http.listen:  # nobody can look at the line model without the listener
                self.line.observe(normalised)
            await self._append(normalised)

        return emit

    def _loss_counter(self, equipment_id: str) -> CountLoss:
        """`CountLoss` for one equipment: `Buffer.count_loss` makes the count durable and announces it."""

        async def count_loss(reason: str, count: int) -> None:
            await self.buffer.count_loss(equipment_id, reason, count)

        return count_loss

    async def _append(self, records: Sequence[Record]) -> None:
        """Durable when it returns. Loss (eviction, too large) is counted and announced by the buffer."""
        if not records:
            return
        result = await self.buffer.append(records)
        self.machine_states.observe(records)
        self.state.messages_buffered += result.accepted

    def _delivered(self, messages: Sequence[StoredMessage], acked_at: float) -> None:
        self.state.messages_published += len(messages)
        for message in messages:
            self.state.observe_publish_latency(max(acked_at - message.created, 0.0))

    # ----------------------------------------------------------------------------------------------
    # Status

    def _status_payload(self, state: str, cause: str | None = None) -> bytes:
        """The retained status. `online` and a clean stop carry the backlog, loss and equipment figures
        (`emsedge fleet` reads them); the last will (`connection_lost`) is built when a connection is made,
        so its `ts` is the start of that connection and its figures would be stale: it carries none."""
        body: dict[str, object] = {
            "schema": SCHEMA_STATUS,
            "gateway": self.settings.gateway.id,
            "state": state,
            "ts": utc_iso(),
            "version": __version__,
            "started_at": self.started_at,
        }
        if cause is not None:
            body["cause"] = cause
        if cause != "connection_lost":
            stats = self.buffer.stats()
            body["backlog"] = stats.count
            body["backlog_oldest_age_s"] = round(stats.oldest_age_s(time.monotonic()), 3)
            body["drain_eta_s"] = self.forwarder.drain_eta()
            body["dropped"] = stats.evicted_total
            body["dead_letters"] = stats.dead_letters
            body["dropped_total"] = stats.dropped_total
            body["dropped_total_by_equipment"] = dict(sorted(stats.dropped_by_equipment.items()))
            body["status_interval_s"] = self.settings.mqtt.status_interval
            by_state: dict[str, int] = {}
            for equipment in self.settings.equipment:
                health = self.state.equipment.get(equipment.id)
                name = str(health.state) if health is not None else "connecting"
                by_state[name] = by_state.get(name, 0) + 1
            body["equipment_total"] = len(self.settings.equipment)
            body["equipment_connected"] = by_state.get("connected", 0)
            body["equipment_by_state"] = dict(sorted(by_state.items()))
        return json.dumps(body, separators=(",", ":")).encode()

    async def _publish_status(self, *, task_status: TaskStatus[None]) -> None:
        """Refresh the retained MQTT status while connected; log the backlog while there is one."""
        task_status.started()
        while True:
            await anyio.sleep(self.settings.mqtt.status_interval)
            stats = self.buffer.stats()  # STATUS= for systemd is refreshed by service.run_watchdog
            if stats.count > self.settings.mqtt.max_inflight:
                log.info(
                    "backlog", count=stats.count,
                    oldest_age_s=round(stats.oldest_age_s(time.monotonic()), 1),
                    drain_rate=round(self.forwarder.drain_rate, 1),
                )
            if self.publisher.connected:
                with anyio.move_on_after(5):
                    await self.publisher.publish(
                        self.topics.status, self._status_payload("online"), qos=1, retain=True
                    )

    # ----------------------------------------------------------------------------------------------
    # Reload

    async def reload(self) -> bool:
        """Re-read the config. Valid: restart only changed equipment. Invalid: keep the old config."""
        if self.config_path is None:
            log.warning("reload requested but the gateway was not started from a file")
            return False
        self.notifier.reloading()
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: config invalid, old config stays in force", problem=problem)
            self.notifier.ready()
            return False
        unchanged_sections = ("gateway", "mqtt", "buffer", "http", "logging")
        for section in unchanged_sections:
            if getattr(new, section) != getattr(self.settings, section):
                log.warning("config section changed; it takes effect on restart, not reload", section=section)
        old = {e.id: e for e in self.settings.equipment}
        fresh = {e.id: e for e in new.equipment}
        changed = [i for i in fresh if i in old and fresh[i] != old[i]]
        removed = [i for i in old if i not in fresh]
        added = [i for i in fresh if i not in old]
        for equipment_id in removed + changed:
            await self._stop_equipment(equipment_id)
            if equipment_id in removed:
                self.state.equipment.pop(equipment_id, None)
                self.state.equipment_info.pop(equipment_id, None)
                self.machine_states.remove(equipment_id)
                if self.compact_telemetry:
                    self.compact.remove(equipment_id)
                self.line.forget(equipment_id)
        self.settings = self.settings.model_copy(update={"equipment": new.equipment})
        for equipment_id in changed + added:
            if equipment_id in changed:
                self.state.equipment[equipment_id] = EquipmentHealth()
            await self._start_equipment(fresh[equipment_id])
        log.info("reloaded", changed=changed, added=added, removed=removed)
        self.notifier.ready()
        self.notifier.status(self.state.status_line())
        return True

