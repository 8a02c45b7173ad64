"""The garbage-collector policy: long-lived objects frozen, cycles among them
still reclaimed on the full interval, every pause measured."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from support.metrics import sample

from bridge.gc_policy import GcPolicy
from bridge.observability.metrics import Metrics


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def pause_count(metrics: Metrics, generation: str) -> float:
    return sample(metrics, "xpander_bridge_gc_pause_seconds_count", generation=generation)


@pytest.fixture
def restore_gc() -> Iterator[None]:
    yield
    gc.unfreeze()


def cycle() -> weakref.ref[Node]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


async def test_freezes_survivors_and_reclaims_their_cycles_on_the_full_interval(
    restore_gc: None,
) -> None:
    policy = GcPolicy(Metrics(), freeze_interval_s=0.05, full_interval_s=0.6)
    policy.install()
    runner = asyncio.get_running_loop().create_task(policy.run())
    try:
        garbage = cycle()  # unreachable, but only the cyclic collector frees it
        await asyncio.sleep(0.15)
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert garbage() is not None, "a frozen cycle is out of the collector's reach"
        await asyncio.sleep(0.8)  # past the full interval: unfrozen and collected
        assert garbage() is None
    finally:
        runner.cancel()
        policy.uninstall()
    assert gc.get_freeze_count() == 0, "uninstall hands every object back"


async def test_every_collection_is_measured_by_generation() -> None:
    metrics = Metrics()
    policy = GcPolicy(metrics, freeze_interval_s=0, full_interval_s=600)
    policy.install()
    try:
        before = pause_count(metrics, "2")
        gc.collect(2)
        gc.collect(0)
        assert pause_count(metrics, "2") == before + 1
        assert pause_count(metrics, "0") >= 1
    finally:
        policy.uninstall()
    gc.collect(2)
    assert pause_count(metrics, "2") == before + 1, "uninstalled: no longer observed"


async def test_zero_interval_leaves_python_defaults(restore_gc: None) -> None:
    policy = GcPolicy(Metrics(), freeze_interval_s=0, full_interval_s=600)
    await asyncio.wait_for(policy.run(), 1)  # returns at once
    assert gc.get_freeze_count() == 0


async def test_young_collections_run_less_often_and_defaults_come_back(restore_gc: None) -> None:
    before = gc.get_threshold()
    policy = GcPolicy(Metrics(), freeze_interval_s=1.0, full_interval_s=600)
    policy.install()
    try:
        assert gc.get_threshold()[0] > before[0]
    finally:
        policy.uninstall()
    assert gc.get_threshold() == before
