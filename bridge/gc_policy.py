"""Keep Python's cyclic garbage collector from pausing the event loop.

Almost everything the bridge allocates is freed by reference counting; the
cyclic collector is there for the rare reference cycle. But a full collection
walks every tracked object, and with 10,000 open streams that is millions of
them: measured at 10,000 streams and 2,000 events/s, a full collection paused
the loop for about 400 ms every 3.5 s (records in flight live just long
enough to be promoted to the old generation, which triggers the next full
collection), and nothing was collected. That pause is the p99 latency.

So every ``freeze_interval_s`` the objects that survived until then are moved
out of the collector's reach (``gc.freeze()``): the long-lived state of the
streams is walked once, not on every collection. Cycles among frozen objects
are not reclaimed while frozen, so every ``full_interval_s`` they are put back
and collected once (``gc.unfreeze()`` then ``gc.collect()``): one pause per
interval instead of one every few seconds, and memory stays bounded. Young
collections also run less often (``_THRESHOLDS``).

Every collection's pause goes to ``xpander_bridge_gc_pause_seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from bridge.observability.metrics import GcGeneration, Metrics

__all__ = ["GcPolicy"]

log = logging.getLogger(__name__)

#: A young collection every 10,000 net allocations instead of Python's 700:
#: most of what an event allocates is freed by reference counting within
#: microseconds, and walking it 14 times as often cost about a tenth of the
#: CPU of the burst benchmark.
_THRESHOLDS = (10_000, 10, 10)
#: the installed policies, and the thresholds to restore when none is left
_active: set[int] = set()
_saved: list[tuple[int, int, int]] = []


class GcPolicy:
    """``install()`` once, ``run()`` as a task, ``uninstall()`` on shutdown."""

    def __init__(self, metrics: Metrics, freeze_interval_s: float, full_interval_s: float) -> None:
        self._metrics = metrics
        self._freeze_every = freeze_interval_s
        self._full_every = full_interval_s
        self._started = 0.0
        self._pauses = {
            int(generation): metrics.gc_pause(generation) for generation in GcGeneration
        }

    def install(self) -> None:
        gc.callbacks.append(self._observe)
        if self._freeze_every > 0:
            # Process-wide settings, and several bridges may share a process
            # (the tests): the first to install saves them, the last restores.
            if not _active:
                _saved.append(gc.get_threshold())
                gc.set_threshold(*_THRESHOLDS)
            _active.add(id(self))

    def uninstall(self) -> None:
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)
        if self._freeze_every > 0 and id(self) in _active:
            _active.discard(id(self))
            if not _active:
                gc.unfreeze()  # the objects go back to the collector's care
                gc.set_threshold(*_saved.pop())

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 2)
        pause = self._pauses.get(generation)
        if pause is not None:
            pause.observe(time.perf_counter() - self._started)

    async def run(self) -> None:
        if self._freeze_every <= 0:
            return
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._full_every
        while True:
            await asyncio.sleep(self._freeze_every)
            if loop.time() >= next_full:
                next_full = loop.time() + self._full_every
                gc.unfreeze()
                collected = gc.collect()
                log.debug("full garbage collection", extra={"collected": collected})
            gc.freeze()
