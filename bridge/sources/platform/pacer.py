"""Turns for work that can wait (an ended task's activity thread) so that it
does not delay work that cannot (the events of tasks still running).

When thousands of tasks end together, each one's thread is a REST call, a
parse and a record: measured, about as much CPU as its events, all at once.
Run side by side with the streams' events on the one event loop, they made
those events wait seconds. So: at most ``max_concurrent`` at once, in the
order they came (an ``asyncio.Lock`` is FIFO); more than one only while the
bridge keeps up (``LoadSignal.busy`` false: ``bridge.app.pressure``). While
it is behind they go one at a time: never starved, and each then takes the
loop's lag to come back, which slows them as much as the loop is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from prometheus_client import Gauge

__all__ = ["FetchPacer", "LoadSignal"]

#: how often the first in line looks again while it may not go (only it polls)
_TICK_S = 0.01


class LoadSignal(Protocol):
    """Whether the bridge is behind now (``bridge.app.pressure.Pressure``)."""

    @property
    def busy(self) -> bool: ...


class _NeverBusy:
    busy = False


class FetchPacer:
    def __init__(
        self,
        max_concurrent: int,
        waiting: Gauge,
        load: LoadSignal | None = None,
        tick_s: float = _TICK_S,
    ) -> None:
        self._max = max_concurrent
        self._waiting = waiting
        self._load: LoadSignal = load if load is not None else _NeverBusy()
        self._tick_s = tick_s
        self._line = asyncio.Lock()
        #: fetches under way
        self.running = 0

    def _may_go(self) -> bool:
        if self.running == 0:
            return True  # one at a time always: nothing waits for ever
        return self.running < self._max and not self._load.busy

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this fetch's turn; the turn lasts the ``async with`` block."""
        self._waiting.inc()
        try:
            async with self._line:
                while not self._may_go():  # noqa: ASYNC110  (the load is sampled, not signalled)
                    await asyncio.sleep(self._tick_s)
                self.running += 1
        finally:
            self._waiting.dec()
        try:
            yield
        finally:
            self.running -= 1
