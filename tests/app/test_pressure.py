"""``Pressure``: behind when the loop is late, or when the record first in the
queue has waited too long (with transactions the loop keeps time meanwhile)."""

from __future__ import annotations

import asyncio

from bridge.app.pressure import Pressure
from bridge.core.record import OutRecord
from bridge.pipeline.queue import RecordQueue


class Lag:
    busy = False


def queued_at(queue: RecordQueue, received_at: float) -> None:
    queue.put_nowait(OutRecord("t", None, b"x", [], "chunk", received_at))


async def test_behind_when_the_loop_is_late_or_the_first_record_waited_too_long() -> None:
    now = asyncio.get_running_loop().time()
    lag = Lag()
    queue = RecordQueue(max_records=10, max_bytes=10_000)
    pressure = Pressure(lag, queue, max_wait_s=0.5)
    assert not pressure.busy, "nothing queued, the loop on time"
    queued_at(queue, now)
    assert not pressure.busy, "a record that just came"
    lag.busy = True
    assert pressure.busy, "the loop is late"
    lag.busy = False
    queue.get_nowait()
    queued_at(queue, now - 2.0)
    assert pressure.busy, "the first in line waited 2 s"
