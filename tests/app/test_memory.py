"""Memory under a hostile frame: a 200 MB ``data:`` line must not be held.

The bridge runs as its own process (as in production), so its resident set
can be read from /proc while the emulator sends one task a single 200 MB data
line. Budget: the bridge's RSS may grow by at most 64 MB over its level
before the line (the frame limit here is 8 MiB, the default; the rest is
aiohttp's read buffer and allocator slack). Before the decoder limit, the same
line took the bridge past 1 GB."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from support.e2e import bridge_config, config_env, consume_until, run_bridge
from support.kafka import KafkaService, consume
from support.waiting import eventually

from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, TaskProfile

LINE_BYTES = 200_000_000
BUDGET_BYTES = 64 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(180)
async def test_a_200_mb_line_is_skipped_within_the_memory_budget(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    profile = TaskProfile(events_per_task=10, event_interval_s=0.2, interval_jitter=0.0)
    async with Emulator(EmulatorSettings(tasks=profile, seed=5)) as emu:
        config = bridge_config(emu, kafka, new_topic, coordination={"enabled": False})
        process = await run_bridge(config_env(config))
        try:
            task = emu.create_task(outcome="completed")["id"]
            await eventually(
                lambda: emu.engine.tasks[task].subscribers > 0, timeout_s=30, what="the stream"
            )
            await asyncio.sleep(0.5)  # the scenario: the bridge settles before the line
            before = rss(process.pid)
            emu.control.inject_huge_line(task, LINE_BYTES)
            peak = before
            dlq: list[object] = []

            async def skipped() -> bool:
                nonlocal peak
                peak = max(peak, rss(process.pid))
                if not dlq:
                    dlq.extend(
                        await consume(
                            kafka.bootstrap_servers, [config.topics.dlq], count=1, max_wait=0.2
                        )
                    )
                return bool(dlq)

            await eventually(skipped, timeout_s=120, what="the line's dead-letter record")
            await consume_until(
                kafka,
                config.topics.events,
                lambda records: any(b"task_finished" in (r.value or b"") for r in records),
                60,
            )
            peak = max(peak, rss(process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), 30)
    print(f"RSS before {before >> 20} MB, peak {peak >> 20} MB")
    assert peak - before <= BUDGET_BYTES, f"RSS grew {(peak - before) >> 20} MB"
