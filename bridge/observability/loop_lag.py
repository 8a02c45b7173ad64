"""How late the event loop runs a timer: the bridge's own measure of a
saturated CPU. Everything the bridge does runs on one event loop, so when
the work offered exceeds a core, every callback waits behind the others and
a timer due now runs late by about that wait. That is what an event read
from a stream waits too before it is normalized and handed to Kafka.

Sampled every ``interval_s`` (a sleep, and how much later than asked it
woke); each sample goes to ``xpander_bridge_event_loop_lag_seconds``.
``busy`` says whether the last sample was over the threshold: work that can
wait (an ended task's activity thread) waits while it is.
"""

from __future__ import annotations

import asyncio

from bridge.observability.metrics import Metrics

__all__ = ["LoopLag"]

#: often enough to see a burst within a few of its events; a sleep this long
#: costs nothing measurable
_INTERVAL_S = 0.02


class LoopLag:
    def __init__(
        self, metrics: Metrics, busy_over_s: float, interval_s: float = _INTERVAL_S
    ) -> None:
        self._histogram = metrics.event_loop_lag
        self._busy_over_s = busy_over_s
        self._interval_s = interval_s
        #: the last sample, in seconds
        self.current_s = 0.0

    @property
    def busy(self) -> bool:
        """The loop ran the last timer later than the threshold."""
        return self.current_s > self._busy_over_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval_s
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            self.current_s = lag = max(0.0, loop.time() - due)
            self._histogram.observe(lag)
