"""The CFX publisher counts each transfer's outcome once, however many disposition updates the broker sends
for it (proton calls `on_accepted` on each; RabbitMQ can send the state, then settled with the same state)."""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace

from emsedge.config import CfxConfig
from emsedge.publish.cfx import CfxPublisher, Outcome, _Handler


def _handler() -> tuple[_Handler, CfxPublisher]:
    publisher = CfxPublisher(CfxConfig(broker="amqp://127.0.0.1:1", address="/exchange/amq.topic"), {})
    return _Handler(publisher), publisher


def _transfer(handler: _Handler, tag: bytes) -> tuple[SimpleNamespace, concurrent.futures.Future[Outcome]]:
    future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
    handler._pending[tag] = future
    condition = SimpleNamespace(name="amqp:not-allowed")
    return SimpleNamespace(delivery=SimpleNamespace(tag=tag, remote=SimpleNamespace(condition=condition))), future


def test_a_transfer_accepted_twice_is_counted_once_and_resolved_ok() -> None:
    handler, publisher = _handler()
    event, future = _transfer(handler, b"1")
    handler.on_accepted(event)
    handler.on_accepted(event)  # the broker's second disposition (settled, same state)
    handler.on_settled(event)
    assert publisher.counters.accepted == 1
    assert future.result(timeout=0).accepted


def test_rejected_and_released_transfers_are_counted_once_each() -> None:
    handler, publisher = _handler()
    rejected, rejected_future = _transfer(handler, b"r")
    released, released_future = _transfer(handler, b"s")
    for _ in range(2):
        handler.on_rejected(rejected)
        handler.on_released(released)
        handler.on_modified(released)
    assert (publisher.counters.rejected, publisher.counters.released, publisher.counters.accepted) == (1, 1, 0)
    assert rejected_future.result(timeout=0).permanent
    assert not released_future.result(timeout=0).accepted
