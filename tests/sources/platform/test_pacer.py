"""Turns of the work that can wait (``bridge.sources.platform.pacer``): a bound,
first come first served, and one at a time while the loop is saturated."""

from __future__ import annotations

import asyncio

import pytest
from support.waiting import eventually

from bridge.observability.metrics import Metrics
from bridge.sources.platform.pacer import FetchPacer

pytestmark = pytest.mark.timeout(30)


class Load:
    busy = False


class Fetches:
    """Fetches that hold their turn until released, noting the order they got it."""

    def __init__(self, pacer: FetchPacer) -> None:
        self.pacer = pacer
        self.started: list[int] = []
        self.release: dict[int, asyncio.Event] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, n: int) -> None:
        self.release[n] = asyncio.Event()
        self.tasks[n] = asyncio.create_task(self._fetch(n))

    async def _fetch(self, n: int) -> None:
        async with self.pacer.turn():
            self.started.append(n)
            await self.release[n].wait()

    async def settle(self) -> None:
        for _ in range(5):  # a few ticks of the pacer's polling
            await asyncio.sleep(0.02)


def waiting(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("xpander_bridge_activity_fetches_waiting")
    return value or 0.0


async def lined_up(bound: int, count: int, load: Load) -> tuple[Metrics, Fetches]:
    """``count`` fetches asking for a turn of a pacer of ``bound``, in order."""
    metrics = Metrics()
    fetches = Fetches(FetchPacer(bound, metrics.activity_fetches_waiting, load, tick_s=0.001))
    for n in range(count):
        fetches.start(n)
    await fetches.settle()
    return metrics, fetches


async def test_up_to_the_bound_at_once_then_first_come_first_served() -> None:
    metrics, fetches = await lined_up(2, 5, Load())
    assert fetches.started == [0, 1] and waiting(metrics) == 3
    fetches.release[1].set()
    await eventually(lambda: fetches.started == [0, 1, 2], timeout_s=5, what="the third's turn")
    fetches.release[0].set()
    fetches.release[2].set()
    await eventually(lambda: fetches.started == [0, 1, 2, 3, 4], timeout_s=5, what="the rest")
    assert waiting(metrics) == 0
    for event in fetches.release.values():
        event.set()
    await asyncio.gather(*fetches.tasks.values())
    assert fetches.pacer.running == 0


async def test_one_at_a_time_while_the_loop_is_busy_never_none() -> None:
    load = Load()
    load.busy = True
    _, fetches = await lined_up(4, 3, load)
    assert fetches.started == [0], "one goes however busy: nothing waits for ever"
    fetches.release[0].set()
    await eventually(lambda: fetches.started == [0, 1], timeout_s=5, what="the next, alone")
    await fetches.settle()
    assert fetches.started == [0, 1]
    load.busy = False
    await eventually(lambda: fetches.started == [0, 1, 2], timeout_s=5, what="more once idle")
    for event in fetches.release.values():
        event.set()
    await asyncio.gather(*fetches.tasks.values())


async def test_a_fetch_cancelled_in_line_or_in_its_turn_gives_its_place_back() -> None:
    metrics, fetches = await lined_up(1, 3, Load())
    fetches.tasks[1].cancel()  # waiting in line
    fetches.tasks[0].cancel()  # in its turn
    await eventually(lambda: fetches.started == [0, 2], timeout_s=5, what="the third's turn")
    assert waiting(metrics) == 0 and fetches.pacer.running == 1
    fetches.release[2].set()
    await asyncio.gather(*fetches.tasks.values(), return_exceptions=True)
    assert fetches.pacer.running == 0
