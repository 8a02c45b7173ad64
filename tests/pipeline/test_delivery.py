"""The delivery loop against a sink that fails on purpose (the seam where a fake
belongs; the real broker is exercised in tests/app)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.metrics import sample

from bridge.core.record import OutRecord
from bridge.core.retry import RetryPolicy
from bridge.errors import (
    AuthError,
    BridgeError,
    FencedError,
    RecordTooLargeError,
    UnavailableError,
)
from bridge.observability.metrics import Metrics
from bridge.pipeline.delivery import DeliveryLoop

pytestmark = pytest.mark.timeout(10)


class FlakySink:
    """Fails the first ``failures`` acknowledgements, then succeeds; can refuse writes."""

    def __init__(
        self,
        failures: int = 0,
        refuse_writes: int = 0,
        too_large: bool = False,
        failure: BridgeError | None = None,
    ) -> None:
        self.failures = failures
        self.refuse_writes = refuse_writes
        self.too_large = too_large
        self.failure = failure or UnavailableError("broker gone")
        #: values refused as too large, whatever ``too_large`` says
        self.too_large_for: set[bytes | None] = set()
        self.written: list[bytes | None] = []

    @staticmethod
    def classify(error: BaseException) -> BridgeError:
        assert isinstance(error, BridgeError)
        return error

    async def write(self, record: OutRecord) -> asyncio.Future[Any]:
        if self.too_large or record.value in self.too_large_for:
            raise RecordTooLargeError("too large")
        if self.refuse_writes > 0:
            self.refuse_writes -= 1
            raise UnavailableError("no metadata")
        self.written.append(record.value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            future.set_exception(self.failure)
        else:
            future.set_result(None)
        return future


def record(value: bytes, acks: list[bytes]) -> OutRecord:
    def delivered(r: OutRecord) -> None:
        assert r.value is not None
        acks.append(r.value)

    return OutRecord("t", b"k", value, [], "chunk", 0.0, on_delivered=delivered)


async def run(sink: FlakySink, values: list[bytes]) -> tuple[DeliveryLoop, list[bytes]]:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue(4)
    metrics = Metrics()
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


async def test_a_record_refused_for_good_is_held_not_acknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue()
    acks: list[bytes] = []
    sink = FlakySink()
    sink.too_large_for = {b"x"}
    metrics = Metrics()
    loop = DeliveryLoop(queue, sink, metrics, held_retry_s=0.05)
    runner = asyncio.create_task(loop.run())
    await queue.put(record(b"x", acks))
    await queue.put(record(b"after", acks))
    for _ in range(100):
        if loop.held and acks:
            break
        await asyncio.sleep(0.01)
    assert acks == [b"after"]  # nothing acknowledged the refused record: no checkpoint moves
    assert loop.held == 1 and not loop.healthy
    assert sample(metrics, "xpander_bridge_records_held") == 1
    assert sample(metrics, "xpander_bridge_publish_errors_total", reason="too_large") >= 1
    assert "refuses a record for good" in caplog.text
    sink.too_large_for = set()  # the broker's limit was raised: the next try passes
    await asyncio.wait_for(loop.drain(), 5)
    assert acks == [b"after", b"x"] and loop.held == 0 and loop.healthy
    runner.cancel()


async def test_a_batch_refused_as_too_large_is_retried_for_its_small_records() -> None:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue()
    acks: list[bytes] = []
    sink = FlakySink(failures=3, failure=RecordTooLargeError("batch too large"))
    loop = DeliveryLoop(
        queue, sink, Metrics(), retry=RetryPolicy(0.001, 0.01), max_record_bytes=1000
    )
    runner = asyncio.create_task(loop.run())
    for value in (b"a", b"b", b"c", b"d"):
        await queue.put(record(value, acks))
    await asyncio.wait_for(loop.drain(), 5)
    assert sorted(acks) == [b"a", b"b", b"c", b"d"] and loop.held == 0
    runner.cancel()


async def test_a_refusal_of_every_send_halts_the_queue_with_bounded_memory() -> None:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue()
    acks: list[bytes] = []
    sink = FlakySink(failures=10**6, failure=AuthError("TopicAuthorizationFailed"))
    loop = DeliveryLoop(queue, sink, Metrics(), held_retry_s=0.05)
    runner = asyncio.create_task(loop.run())
    await queue.put(record(b"first", acks))
    for _ in range(100):
        if loop.halted:
            break
        await asyncio.sleep(0.01)
    for value in [str(i).encode() for i in range(49)]:
        await queue.put(record(value, acks))
    await asyncio.sleep(0.2)  # the scenario: a while halted
    assert loop.halted and not loop.healthy and acks == []
    assert queue.qsize() >= 45  # it stopped taking records: they wait in the bounded queue
    sink.failures = 0  # permission granted
    await asyncio.wait_for(loop.drain(), 5)
    assert len(acks) == 50 and not loop.halted
    runner.cancel()


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


async def test_a_producer_that_failed_for_good_stops_the_loop() -> None:
    queue: asyncio.Queue[OutRecord] = asyncio.Queue()
    acks: list[bytes] = []
    sink = FlakySink(failures=1, failure=FencedError("fatal idempotence error"))
    loop = DeliveryLoop(queue, sink, Metrics(), retry=RetryPolicy(0.001, 0.01))
    await queue.put(record(b"a", acks))
    await queue.put(record(b"b", acks))
    with pytest.raises(FencedError):
        await asyncio.wait_for(loop.run(), 5)
    assert b"a" not in acks and loop.held == 0  # not held for ever: the bridge stops
