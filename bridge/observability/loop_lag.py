"""How late the event loop runs a timer: the bridge's own measure of a
saturated CPU. Everything the bridge does runs on one event loop, so when
the work offered exceeds a core, every callback waits behind the others and
a timer due now runs late by about that wait. That is what an event read
from a stream waits too before it is normalized and handed to Kafka.

Sampled every ``interval_s`` (a sleep, and how much later than asked it
woke); each sample goes to ``xpander_bridge_event_loop_lag_seconds``.
``busy`` says whether a sample over the threshold came within the last
``hold_s``: work that can wait (an ended task's activity thread) waits while
it is. The hold is there because a saturated loop is late in bursts, not on
every sample: measured on the steady benchmark's storm of task ends, pacing
by the last sample alone let through as many fetches as with no pacing.
"""

from __future__ import annotations

import asyncio

from bridge.observability.metrics import Metrics

__all__ = ["LoopLag"]

#: often enough to see a burst within a few of its events; a sleep this long
#: costs nothing measurable
_INTERVAL_S = 0.02
#: how long one late sample keeps the loop busy
_HOLD_S = 1.0


class LoopLag:
    def __init__(
        self,
        metrics: Metrics,
        busy_over_s: float,
        interval_s: float = _INTERVAL_S,
        hold_s: float = _HOLD_S,
    ) -> None:
        self._histogram = metrics.event_loop_lag
        self._busy_over_s = busy_over_s
        self._interval_s = interval_s
        self._hold_s = hold_s
        #: the last sample, in seconds
        self.current_s = 0.0
        #: loop time until which the loop counts as busy
        self._busy_until = float("-inf")

    @property
    def busy(self) -> bool:
        """A timer ran later than the threshold within the last ``hold_s``."""
        return asyncio.get_running_loop().time() < self._busy_until

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval_s
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            self.current_s = lag = max(0.0, now - due)
            self._histogram.observe(lag)
            if lag > self._busy_over_s:
                self._busy_until = now + self._hold_s
