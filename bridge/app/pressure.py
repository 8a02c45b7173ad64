"""Whether the bridge is behind now: the load signal that paces the work
that can wait (``bridge.sources.platform.pacer``).

Two signs, either enough. The event loop runs late (``LoopLag``): the CPU is
saturated. Or the record first in the queue has waited longer than
``max_wait_s``: with Kafka transactions, events wait in the queue for their
transaction while the loop itself keeps time (measured in the steady
benchmark's storm of task ends: records 1.5-2 s old at the start of their
transaction, the loop's lag mostly under 10 ms), so loop lag alone let the
activity fetches through exactly when the events were behind.
"""

from __future__ import annotations

import asyncio

from bridge.pipeline.queue import RecordQueue
from bridge.sources.platform.pacer import LoadSignal

__all__ = ["Pressure"]


class Pressure:
    def __init__(self, lag: LoadSignal, queue: RecordQueue, max_wait_s: float) -> None:
        #: the event loop's lag (``LoopLag``)
        self._lag = lag
        self._queue = queue
        self._max_wait_s = max_wait_s

    @property
    def busy(self) -> bool:
        if self._lag.busy:
            return True
        oldest = self._queue.oldest_received_at()
        return oldest is not None and asyncio.get_running_loop().time() - oldest > self._max_wait_s
