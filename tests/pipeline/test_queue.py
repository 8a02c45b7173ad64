"""The queue between sources and sink: bounded by records and by bytes."""

from __future__ import annotations

import asyncio

import pytest

from bridge.core.record import OutRecord
from bridge.pipeline.queue import RecordQueue

pytestmark = pytest.mark.timeout(5)


def record(size: int) -> OutRecord:
    return OutRecord("t", None, b"x" * size, [], "chunk", 0.0)


async def test_put_waits_when_the_byte_budget_is_reached() -> None:
    queue = RecordQueue(max_records=100, max_bytes=1000)
    await queue.put(record(600))
    await queue.put(record(600))  # over the budget now: the next put waits
    blocked = asyncio.create_task(queue.put(record(10)))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert queue.bytes == 1200
    await queue.get()
    await asyncio.wait_for(blocked, 1)
    assert queue.bytes == 610


async def test_one_large_record_always_fits_an_empty_queue() -> None:
    queue = RecordQueue(max_records=10, max_bytes=100)
    await asyncio.wait_for(queue.put(record(5000)), 1)
    assert queue.qsize() == 1


async def test_record_count_still_bounds() -> None:
    queue = RecordQueue(max_records=2, max_bytes=10**9)
    queue.put_nowait(record(1))
    queue.put_nowait(record(1))
    assert queue.full()
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(record(1))


async def test_the_oldest_record_is_the_one_first_in_line() -> None:
    queue = RecordQueue(max_records=10, max_bytes=1000)
    assert queue.oldest_received_at() is None
    for received_at in (5.0, 7.0):
        queue.put_nowait(OutRecord("t", None, b"x", [], "chunk", received_at))
    assert queue.oldest_received_at() == 5.0
    queue.get_nowait()
    assert queue.oldest_received_at() == 7.0
