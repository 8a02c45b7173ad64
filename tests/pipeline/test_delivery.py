"""The delivery loop against a sink that fails on purpose (the seam where a fake
belongs; the real broker is exercised in tests/app)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.metrics import sample

from bridge.core.record import OutRecord
from bridge.core.retry import RetryPolicy
from bridge.errors import BridgeError, RecordTooLargeError, UnavailableError
from bridge.observability.metrics import Metrics
from bridge.pipeline.delivery import DeliveryLoop

pytestmark = pytest.mark.timeout(10)


class FlakySink:
    """Fails the first ``failures`` acknowledgements, then succeeds; can refuse writes."""

    def __init__(self, failures: int = 0, refuse_writes: int = 0, too_large: bool = False) -> None:
        self.failures = failures
        self.refuse_writes = refuse_writes
        self.too_large = too_large
        self.written: list[bytes | None] = []

    @staticmethod
    def classify(error: BaseException) -> BridgeError:
        assert isinstance(error, BridgeError)
        return error

    async def write(self, record: OutRecord) -> asyncio.Future[Any]:
        if self.too_large:
            raise RecordTooLargeError("too large")
        if self.refuse_writes > 0:
            self.refuse_writes -= 1
            raise UnavailableError("no metadata")
        self.written.append(record.value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            future.set_exception(UnavailableError("broker gone"))
        else:
            future.set_result(None)
        return future


def record(value: bytes, acks: list[bytes]) -> OutRecord:
    def delivered(r: OutRecord) -> None:
        assert r.value is not None
        acks.append(r.value)

    return OutRecord("t", b"k", value, [], "chunk", 0.0, on_delivered=delivered)


async def run(
    sink: FlakySink, values: list[bytes], metrics: Metrics | None = None
) -> tuple[DeliveryLoop, list[bytes]]:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue(4)
    metrics = metrics if metrics is not None else Metrics()
    loop = DeliveryLoop(queue, sink, metrics, retry=RetryPolicy(0.001, 0.01))
    acks: list[bytes] = []
    runner = asyncio.create_task(loop.run())
    for value in values:
        await queue.put(record(value, acks))
    await loop.drain()
    runner.cancel()
    return loop, acks


async def test_failed_acks_are_retried_until_delivered_once_each() -> None:
    values = [str(i).encode() for i in range(20)]
    loop, acks = await run(FlakySink(failures=7), values)
    assert sorted(acks) == sorted(values)
    assert len(acks) == len(values)
    assert loop.delivered == 20
    assert loop.healthy


async def test_refused_writes_wait_and_hold_the_queue() -> None:
    values = [b"a", b"b", b"c"]
    sink = FlakySink(refuse_writes=5)
    _, acks = await run(sink, values)
    assert acks == values  # in order: the loop waited on the first record


async def test_undeliverable_record_is_counted_and_logged_not_lost_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    _, acks = await run(FlakySink(too_large=True), [b"x"], metrics)
    assert acks == [b"x"]  # the event is done: not retried for ever
    assert sample(metrics, "xpander_bridge_dead_letters_total", reason="undeliverable") == 1
    assert "too large" in caplog.text


async def test_a_full_queue_blocks_the_producer_side() -> None:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue(2)
    acks: list[bytes] = []
    await queue.put(record(b"1", acks))
    await queue.put(record(b"2", acks))
    blocked = asyncio.create_task(queue.put(record(b"3", acks)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # back-pressure: the stream waits, nothing dropped
    loop = DeliveryLoop(queue, FlakySink(), Metrics())
    runner = asyncio.create_task(loop.run())
    await blocked
    await loop.drain()
    runner.cancel()
    assert acks == [b"1", b"2", b"3"]


async def test_stalled_when_records_wait_without_progress() -> None:
    class Silent(FlakySink):
        async def write(self, record: OutRecord) -> asyncio.Future[Any]:
            return asyncio.get_running_loop().create_future()  # never acknowledged

    queue: asyncio.Queue[OutRecord] = asyncio.Queue(2)
    loop = DeliveryLoop(queue, Silent(), Metrics())
    runner = asyncio.create_task(loop.run())
    assert not loop.stalled(0.05)
    await queue.put(record(b"1", []))
    await asyncio.sleep(0.1)
    assert loop.stalled(0.05)
    runner.cancel()
