"""The OPC UA adapter: subscriptions (PushAdapter) or Read polling (PolledAdapter).

Both run under `emsedge.supervisor`, which owns reconnects, backoff, connection events and the
permanent-error policy; this module only opens sessions and says why they ended.

Subscribe mode (`OpcUaSubscriber.session`), one connection:
  connect (connect.py: exact security, deadlines) -> resolve node ids and browse paths (every connection,
  because a restarted server may renumber them) -> one subscription, one monitored item per signal ->
  `ctx.connected()` -> consume notifications until the link or the subscription ends -> raise
  `AdapterError`. asyncua's own auto_reconnect is off on purpose: it re-creates subscriptions with the
  *old* node ids, which is how other gateways end up stuck on BadNodeIdUnknown after a server restart
  (DOMAIN.md §6.11-13).

Back-pressure: notifications wait in asyncua's iterator queue, bounded at max(QUEUE_FLOOR, 8 x the summed
queue sizes). It fills only if `ctx.emit` (the durable buffer) stalls for many cycles; then asyncua drops
the oldest notifications. Every dropped notification is counted: `ctx.count_loss("opcua_queue_overflow",
n)` makes the count durable and announced (and visible in /metrics), and the episode is logged once.

Batching invariant: asyncua's publish callback puts every notification of one PublishResponse into the
subscription's queue synchronously, so the consumer takes one event, then drains what is already queued:
that is one publishing cycle (or several, if the pipeline was busy), emitted as ONE telemetry record plus
any fault events. Never one MQTT message per value.

Permanent errors (a browse path or node that does not exist, an untrusted server certificate, a policy
the server does not offer, a missing key file) are raised as `AdapterError(transient=False)` naming the
signal or the setting; the supervisor marks the equipment `failed` and retries at `backoff.max`, so it
recovers by itself once the server's address space or certificate is fixed.

Poll mode (`OpcUaPoller`) runs on the shared poll grid (`emsedge.scheduler`): `__aenter__` connects and
resolves, `poll()` issues one Read per `max_nodes_per_read` chunk (usually exactly one Read) and returns
one record. A Read where *every* node is BadNodeIdUnknown is transient, so a restarted server that
renumbered its nodes gets a fresh connection and fresh resolution instead of bad data forever.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent, OpcEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from emsedge.adapters.base import AdapterContext
from emsedge.adapters.opcua.config import OpcUaEquipment
from emsedge.adapters.opcua.connect import ResolvedSignal, classify, connect, disconnect, resolve
from emsedge.adapters.opcua.convert import bad_reading, reading_from_datavalue, safe_json, valid_time
from emsedge.compat import subscription_event_queue
from emsedge.errors import AdapterError
from emsedge.schema import EventType, Record, telemetry, utc_iso

_HANDLE_BASE = 1_000_000  # our client handles; asyncua numbers its own (event items) from 200
_ITEMS_PER_CALL = 1000  # CreateMonitoredItems chunk: servers cap items per call
QUEUE_FLOOR = 20_000
"""Smallest notification queue (events between the server's publish and our consumer); see `_subscribe`."""
OVERFLOW_REASON = "opcua_queue_overflow"
"""`count_loss` reason for notifications asyncua dropped because the queue was full."""
_UNKNOWN_NODE = {"BadNodeIdUnknown", "BadNodeIdInvalid", "BadAttributeIdInvalid", "BadNotReadable"}


def warn_security_once(ctx: AdapterContext, config: OpcUaEquipment) -> None:
    conn = config.connection
    if conn.security.policy == "None":
        ctx.log.warning("OPC UA security is None: traffic is neither signed nor encrypted", url=conn.url)
    elif conn.server_certificate is None and conn.trust_dir is None:
        ctx.log.warning(
            "server certificate is not verified: set server_certificate (pin) or trust_dir", url=conn.url
        )


def offline_readings(config: OpcUaEquipment, status: str = "BadNotConnected") -> list[dict[str, Any]]:
    now = utc_iso()
    return [bad_reading(s, status, now) for s in config.signals]


class _Base:
    def __init__(self, ctx: AdapterContext) -> None:
        assert isinstance(ctx.equipment, OpcUaEquipment)
        self.ctx = ctx
        self.config: OpcUaEquipment = ctx.equipment

    def offline_records(self, reason: str = "") -> Sequence[Record]:
        """Bad-quality readings for every signal, emitted with `connection_lost`."""
        return [telemetry(self.config.id, self.config.type, offline_readings(self.config))]

    def endpoint(self) -> tuple[str, int] | None:
        """`HasEndpoint`: the server's host and port from `opc.tcp://host[:port]` (4840 when omitted)."""
        parts = urlsplit(self.config.connection.url)
        try:
            port = parts.port
        except ValueError:
            return None
        return (parts.hostname, port or 4840) if parts.hostname else None



class OpcUaSubscriber(_Base):
    """Push adapter for `mode: subscribe`. Owns its reconnect loop (see module docstring)."""

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self._fault_ids: dict[str, str] = {}
        self.subscription_count = 0  # sessions that got a live subscription; tests and metrics read it
        self._overflowing = False
        self._overflowed = 0  # notifications asyncua dropped from the full queue, not yet counted
        self._warned = False

    async def session(self, ctx: AdapterContext) -> None:
        """One connection: connect, resolve, subscribe, consume; raises `AdapterError` when it ends."""
        if not self._warned:
            warn_security_once(ctx, self.config)
            self._warned = True
        lost = anyio.Event()
        reason: list[str] = []
        try:
            await self._session(lost, reason)
        except AdapterError:
            raise
        except (OSError, TimeoutError, ConnectionError, UaError) as exc:
            raise classify(exc) from None
        # anything else (a library bug, an odd server) propagates: the supervisor logs it once with its
        # traceback and retries it as transient
        raise AdapterError(reason[0] if reason else "subscription ended")

    async def _session(self, lost: anyio.Event, reason: list[str]) -> None:
        timeout = float(self.config.connection.timeout)
        client, _ = await connect(self.config.connection)
        try:

            async def _on_lost(exc: Exception) -> None:
                reason.append(f"connection lost: {classify(exc)}")
                lost.set()

            client.connection_lost_callback = _on_lost
            resolved = await resolve(client, self.config.signals, timeout)
            with anyio.fail_after(timeout * 4):
                sub, handles = await self._subscribe(client, resolved)
            self.subscription_count += 1
            await self.ctx.connected()
            await self._consume(sub, handles, lost, reason)
        finally:
            await disconnect(client)

    async def _subscribe(
        self, client: Client, resolved: list[ResolvedSignal]
    ) -> tuple[Subscription, dict[int, ResolvedSignal]]:
        cfg = self.config
        period_ms = float(cfg.publishing_interval) * 1000
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = period_ms
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(period_ms)
        params.RequestedLifetimeCount = params.RequestedMaxKeepAliveCount * 10
        params.MaxNotificationsPerPublish = 10_000  # servers split bigger cycles (MoreNotifications)
        params.PublishingEnabled = True
        queue = max(QUEUE_FLOOR, 8 * sum(s.queue_size for s in cfg.signals))
        sub = await client.create_subscription(params, None, queue_maxsize=queue, overflow=OverflowPolicy.DROP_OLDEST)
        self._count_overflow(sub)
        handles: dict[int, ResolvedSignal] = {}
        requests: list[ua.MonitoredItemCreateRequest] = []
        for i, r in enumerate(resolved):
            handle = _HANDLE_BASE + i
            handles[handle] = r
            requests.append(_item_request(r, handle))
        problems: list[str] = []
        for start in range(0, len(requests), _ITEMS_PER_CALL):
            chunk = requests[start : start + _ITEMS_PER_CALL]
            results = await sub.create_monitored_items(chunk)
            for req, result in zip(chunk, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    r = handles[req.RequestedParameters.ClientHandle]
                    problems.append(f"signal {r.signal.name!r} ({r.node_id.to_string()}): {result.name}")
        if problems:
            raise AdapterError("cannot monitor " + "; ".join(problems), transient=False)
        for source in cfg.events:
            try:
                notifier = ua.NodeId.from_string(source.node)
            except (ValueError, UaError) as exc:
                raise AdapterError(f"events {source.name!r}: node {source.node!r} is not a NodeId ({exc})",
                                   transient=False) from None
            try:
                await sub.subscribe_events(notifier, [ObjectIds.ConditionType, ObjectIds.AlarmConditionType])
            except UaStatusCodeError as exc:
                raise AdapterError(
                    f"cannot subscribe to events {source.name!r} at {source.node}: {classify(exc)}", transient=False
                ) from None
        self.ctx.log.info("subscribed", items=len(requests), events=len(cfg.events), publishing_interval_ms=period_ms)
        return sub, handles

    def _count_overflow(self, sub: Subscription) -> None:
        """Count every notification asyncua drops from the full queue (DROP_OLDEST drops one per call).

        asyncua only logs nothing and drops; `_handle_overflow` is the one place that knows. Wrapping it
        on this instance is a private hook into asyncua, pinned by the overflow integration test.
        """
        handle = getattr(sub, "_handle_overflow", None)
        if not callable(handle):
            return

        def counting(event: Any) -> None:
            self._overflowed += 1
            handle(event)

        sub._handle_overflow = counting  # type: ignore[method-assign]

    async def _report_overflow(self) -> None:
        count, self._overflowed = self._overflowed, 0
        if count:
            await self.ctx.count_loss(OVERFLOW_REASON, count)

    async def _consume(
        self, sub: Subscription, handles: dict[int, ResolvedSignal], lost: anyio.Event, reason: list[str]
    ) -> None:
        queue = subscription_event_queue(sub)
        drainable = isinstance(queue, asyncio.Queue)
        cfg = self.config
        while True:
            try:
                first = await sub.next_event(timeout=0.5)
            except StopAsyncIteration:
                return
            await self._report_overflow()
            if first is None:
                if lost.is_set():
                    return
                continue
            batch = [first]
            if drainable:
                assert isinstance(queue, asyncio.Queue)
                if queue.full() != self._overflowing:  # log the state change, not every cycle
                    self._overflowing = queue.full()
                    if self._overflowing:
                        self.ctx.log.warning("notification queue full: the pipeline is slower than the server; "
                                             "oldest notifications are being dropped", size=queue.maxsize)
                while True:
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if item is None:
                        lost.set()
                        break
                    batch.append(item)
            received = time.time()
            readings: list[dict[str, Any]] = []
            records: list[Record] = []
            for ev in batch:
                if isinstance(ev, DataChangeEvent):
                    r = handles.get(ev.data.monitored_item.ClientHandle)
                    if r is not None:
                        readings.append(reading_from_datavalue(r.signal, ev.data.monitored_item.Value, received,
                                                               cfg.encoding))
                elif isinstance(ev, OpcEvent):
                    records.extend(self._fault_events(ev.event))
                elif isinstance(ev, StatusChangeEvent):
                    status = ev.notification.Status
                    reason.append(f"subscription status {status.name}")
                    lost.set()
            if readings:
                self.ctx.health.good_read(len(readings))
                records.insert(0, telemetry(cfg.id, cfg.type, readings))
            if records:
                await self.ctx.emit(records)
            await self._report_overflow()
            if lost.is_set():
                return

    def _fault_events(self, event: Any) -> Iterator[Record]:
        """Alarms & Conditions -> fault_occurred / fault_cleared, linked by fault_occurrence_id.

        A condition is keyed by its ConditionId (the event's `NodeId` field) or, for servers that send
        plain events, by source + condition/event type. `ActiveState/Id` decides occurred vs cleared;
        an event without an active state is a one-shot fault_occurred.
        """
        fields = event.get_event_props_as_fields_dict() if hasattr(event, "get_event_props_as_fields_dict") else {}
        get = fields.get

        def val(name: str) -> Any:
            v = get(name)
            return v.Value if isinstance(v, ua.Variant) else v

        encoding = self.config.encoding

        def to_json(value: Any) -> Any:  # event fields have no quality: out of bounds -> None
            return safe_json(value, encoding)

        condition_id = val("NodeId")
        code = to_json(val("ConditionName")) or to_json(val("SourceName")) or to_json(val("EventType"))
        key = str(to_json(condition_id)) if condition_id else f"{to_json(val('SourceNode'))}|{code}"
        active = val("ActiveState/Id")
        ts_raw = valid_time(val("Time"))
        ts = utc_iso(ts_raw) if ts_raw is not None else None
        common = {
            "fault_code": code,
            "message": to_json(val("Message")),
            "severity": to_json(val("Severity")),  # the contract's model maps 1..1000 to a Severity name
            "opcua_severity": to_json(val("Severity")),
            "source": to_json(val("SourceName")),
        }
        if active is False:
            occurrence = self._fault_ids.pop(key, None)
            if occurrence is None:
                return
            yield self.ctx.event(EventType.FAULT_CLEARED, ts, fault_occurrence_id=occurrence, **common)
            return
        if active is True and key in self._fault_ids:
            return  # a re-notification (acknowledge, comment, refresh) of a fault already reported
        event_id = val("EventId")
        occurrence = str(uuid.UUID(bytes=bytes(event_id)[:16])) if isinstance(event_id, bytes) and len(event_id) >= 16 \
            else str(uuid.uuid4())
        if active is True:
            self._fault_ids[key] = occurrence
        yield self.ctx.event(EventType.FAULT_OCCURRED, ts, fault_occurrence_id=occurrence, **common)


def _item_request(r: ResolvedSignal, handle: int) -> ua.MonitoredItemCreateRequest:
    s = r.signal
    rv = ua.ReadValueId()
    rv.NodeId = r.node_id
    rv.AttributeId = AttributeIds.Value
    mparams = ua.MonitoringParameters()
    mparams.ClientHandle = handle
    mparams.SamplingInterval = float(s.sampling_interval) * 1000 if s.sampling_interval is not None else -1.0
    mparams.QueueSize = s.queue_size
    mparams.DiscardOldest = True
    if s.deadband is not None:
        f = ua.DataChangeFilter()
        f.Trigger = ua.DataChangeTrigger.StatusValue
        f.DeadbandType = 1 if s.deadband.type == "absolute" else 2
        f.DeadbandValue = float(s.deadband.value)
        mparams.Filter = f
    mir = ua.MonitoredItemCreateRequest()
    mir.ItemToMonitor = rv
    mir.MonitoringMode = ua.MonitoringMode.Reporting
    mir.RequestedParameters = mparams
    return mir


class OpcUaPoller(_Base):
    """Polled adapter for `mode: poll`: one Read per chunk of `max_nodes_per_read` per cycle."""

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self._client: Client | None = None
        self._resolved: list[ResolvedSignal] = []
        self._warned = False

    async def __aenter__(self) -> Self:
        if not self._warned:
            warn_security_once(self.ctx, self.config)
            self._warned = True
        timeout = float(self.config.connection.timeout)
        try:
            client, _ = await connect(self.config.connection)
        except AdapterError:
            raise
        except Exception as exc:
            raise classify(exc) from None
        try:
            self._resolved = await resolve(client, self.config.signals, timeout)
        except AdapterError:
            await disconnect(client)
            raise
        except Exception as exc:
            await disconnect(client)
            raise classify(exc) from None
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await disconnect(client)

    async def poll(self) -> Sequence[Record]:
        client = self._client
        if client is None:
            raise AdapterError("not connected")
        timeout = float(self.config.connection.timeout)
        chunk_size = self.config.max_nodes_per_read
        readings: list[dict[str, Any]] = []
        try:
            for start in range(0, len(self._resolved), chunk_size):
                chunk = self._resolved[start : start + chunk_size]
                params = ua.ReadParameters()
                params.TimestampsToReturn = ua.TimestampsToReturn.Both
                for r in chunk:
                    rv = ua.ReadValueId()
                    rv.NodeId = r.node_id
                    rv.AttributeId = AttributeIds.Value
                    params.NodesToRead.append(rv)
                with anyio.fail_after(timeout):
                    results = await client.uaclient.read(params)
                received = time.time()
                encoding = self.config.encoding
                readings.extend(reading_from_datavalue(r.signal, dv, received, encoding)
                                for r, dv in zip(chunk, results, strict=True))
        except AdapterError:
            raise
        except Exception as exc:
            raise classify(exc) from None
        if readings and all(r.get("status") in _UNKNOWN_NODE for r in readings):
            raise AdapterError("every node is unknown to the server (restarted?): reconnecting to re-resolve")
        return [telemetry(self.config.id, self.config.type, readings)]
