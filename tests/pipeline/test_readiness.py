"""Readiness of the Kafka side: a real DeliveryLoop on a stub sink, a real
queue, Health and Metrics; only the sink (the seam to the broker) is a stub.

A stall is ten seconds or more without an ack; those tests run on an event
loop whose clock the test moves forward, instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from support.waiting import eventually

from bridge.core.record import OutRecord
from bridge.core.retry import RetryPolicy
from bridge.errors import BridgeError, UnavailableError
from bridge.observability.health import Health
from bridge.observability.metrics import Metrics
from bridge.pipeline.delivery import DeliveryLoop
from bridge.pipeline.queue import RecordQueue
from bridge.pipeline.readiness import KafkaReadiness

pytestmark = pytest.mark.timeout(20)


class StubSink:
    """Connected or not; acks at once, fails every ack while ``failing``, or
    keeps every ack pending while ``silent`` (the futures are in ``pending``)."""

    def __init__(self, *, connected: bool = True) -> None:
        self._connected = connected
        self.failing = False
        self.silent = False
        self.pending: list[asyncio.Future[Any]] = []
        self.writes = 0

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self._connected = value

    async def write(self, record: OutRecord) -> asyncio.Future[Any]:
        self.writes += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.silent:
            self.pending.append(future)
        elif self.failing:
            future.set_exception(UnavailableError("broker away"))
        else:
            future.set_result(None)
        return future

    def classify(self, error: BaseException) -> BridgeError:
        return error if isinstance(error, BridgeError) else UnavailableError(str(error))


class Parts:
    def __init__(self, sink: StubSink, *, request_timeout_ms: int = 1000) -> None:
        self.sink = sink
        self.metrics = Metrics()
        self.health = Health(self.metrics)
        self.queue = RecordQueue(100, 1_000_000)
        self.delivery = DeliveryLoop(
            self.queue, sink, self.metrics, retry=RetryPolicy(0.001, 0.005)
        )
        self.readiness = KafkaReadiness(
            sink,
            self.delivery,
            self.queue,
            self.health,
            self.metrics,
            request_timeout_ms=request_timeout_ms,
        )

    @property
    def kafka_ok(self) -> bool:
        self.readiness.check()
        ok = self.health.conditions()["kafka"]["ok"]
        assert isinstance(ok, bool)
        assert self.sample("xpander_bridge_ready") == (1.0 if ok else 0.0)
        return ok

    def sample(self, name: str) -> float | None:
        value: float | None = self.metrics.registry.get_sample_value(name)
        return value


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def record(value: bytes = b"v") -> OutRecord:
    return OutRecord("events", b"k", value, [], "chunk", 0.0)


async def test_not_connected_is_not_ready_even_when_delivery_is_healthy() -> None:
    parts = Parts(StubSink(connected=False))
    assert parts.delivery.healthy
    assert not parts.kafka_ok
    assert parts.health.conditions()["kafka"]["detail"] != ""
    parts.sink.connected = True
    assert parts.kafka_ok
    assert parts.health.conditions()["kafka"]["detail"] == ""


async def test_failing_sends_make_it_not_ready_until_an_ack_arrives() -> None:
    parts = Parts(StubSink())
    parts.sink.failing = True
    runner = asyncio.create_task(parts.delivery.run())
    try:
        await parts.queue.put(record())
        await eventually(lambda: not parts.delivery.healthy, timeout_s=5, what="a failed send")
        assert not parts.kafka_ok
        parts.sink.failing = False
        await asyncio.wait_for(parts.delivery.drain(), 5)
        assert parts.delivery.delivered == 1
        assert parts.kafka_ok
    finally:
        await stop(runner)


async def test_queue_depth_is_sampled_by_check_and_by_run() -> None:
    parts = Parts(StubSink())
    for i in range(3):
        parts.queue.put_nowait(record(str(i).encode()))
    assert parts.sample("xpander_bridge_queue_depth") == 0  # sampled, not set per record
    parts.readiness.check()
    assert parts.sample("xpander_bridge_queue_depth") == 3
    watcher = asyncio.create_task(parts.readiness.run(period_s=0.01))
    try:
        parts.queue.get_nowait()
        await eventually(
            lambda: parts.sample("xpander_bridge_queue_depth") == 2,
            timeout_s=5,
            what="the next sample",
        )
        runner = asyncio.create_task(parts.delivery.run())
        try:
            await asyncio.wait_for(parts.delivery.drain(), 5)
            await eventually(
                lambda: parts.sample("xpander_bridge_queue_depth") == 0,
                timeout_s=5,
                what="an empty queue",
            )
        finally:
            await stop(runner)
        assert parts.health.conditions()["kafka"]["ok"] is True
    finally:
        await stop(watcher)


# --- stalls: a loop whose clock the test moves ------------------------------------


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` runs ``offset`` seconds ahead when told."""

    offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


def run_on_clock(test: Callable[[ClockLoop], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=ClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ClockLoop)
        runner.run(test(loop))


def test_records_waiting_ten_seconds_without_an_ack_is_a_stall() -> None:
    async def scenario(loop: ClockLoop) -> None:
        parts = Parts(StubSink(), request_timeout_ms=1000)
        parts.sink.silent = True
        runner = asyncio.create_task(parts.delivery.run())
        try:
            await parts.queue.put(record())
            await eventually(
                lambda: parts.delivery.in_flight == 1, timeout_s=5, what="the record in flight"
            )
            assert parts.kafka_ok, "a record just sent is not a stall"
            loop.offset += 9.0
            assert parts.kafka_ok, "the threshold is ten seconds at least"
            loop.offset += 2.0
            assert not parts.kafka_ok
            assert parts.delivery.healthy, "no send failed: only the stall check sees it"
            parts.sink.pending[0].set_result(None)  # the broker answers at last
            await asyncio.wait_for(parts.delivery.drain(), 5)
            assert parts.kafka_ok
        finally:
            await stop(runner)

    run_on_clock(scenario)


def test_stall_threshold_grows_with_the_request_timeout() -> None:
    async def scenario(loop: ClockLoop) -> None:
        # 2/3 of a 30 s request timeout: 20 s, not the 10 s floor.
        parts = Parts(StubSink(), request_timeout_ms=30_000)
        parts.sink.silent = True
        runner = asyncio.create_task(parts.delivery.run())
        try:
            await parts.queue.put(record())
            await eventually(
                lambda: parts.delivery.in_flight == 1, timeout_s=5, what="the record in flight"
            )
            loop.offset += 15.0
            assert parts.kafka_ok
            loop.offset += 6.0
            assert not parts.kafka_ok
        finally:
            await stop(runner)

    run_on_clock(scenario)


def test_an_idle_pipeline_is_never_stalled() -> None:
    async def scenario(loop: ClockLoop) -> None:
        parts = Parts(StubSink())
        runner = asyncio.create_task(parts.delivery.run())
        try:
            await parts.queue.put(record())
            await asyncio.wait_for(parts.delivery.drain(), 5)
            loop.offset += 3600.0  # an hour without records
            assert parts.kafka_ok
            parts.sink.silent = True
            await parts.queue.put(record())
            await eventually(
                lambda: parts.delivery.in_flight == 1, timeout_s=5, what="the record in flight"
            )
            assert parts.kafka_ok, "the idle hour does not count against the new record"
        finally:
            await stop(runner)

    run_on_clock(scenario)
