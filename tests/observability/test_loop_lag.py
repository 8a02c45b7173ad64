"""``LoopLag``: a loop held up shows as lag, and as busy until it has kept time
for the hold."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.waiting import eventually

from bridge.observability.loop_lag import LoopLag
from bridge.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


async def test_a_blocked_loop_is_measured_and_busy_until_it_recovers() -> None:
    metrics = Metrics()
    lag = LoopLag(metrics, busy_over_s=0.05, interval_s=0.01, hold_s=2.0)
    sampling = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251  (the point: the CPU saturated, nothing else runs)
        for _ in range(100):  # the sampler's late timer runs within a few iterations
            await asyncio.sleep(0)
            if lag.busy:
                break
        # (a lower bound only: however slow the machine, the timer was 0.3 s late or more)
        assert lag.busy and lag.current_s >= 0.25
        await asyncio.sleep(0.1)  # samples on time again, within the hold
        assert lag.current_s < 0.25 and lag.busy, "held: a saturated loop is late in bursts"
        await eventually(lambda: not lag.busy, timeout_s=10, what="the loop to keep time again")
        count = metrics.registry.get_sample_value("xpander_bridge_event_loop_lag_seconds_count")
        slow = metrics.registry.get_sample_value(
            "xpander_bridge_event_loop_lag_seconds_bucket", {"le": "0.1"}
        )
        assert count is not None and slow is not None and count - slow >= 1
    finally:
        sampling.cancel()
