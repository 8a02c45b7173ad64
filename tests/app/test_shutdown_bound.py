"""SIGTERM exits within the deadline whatever hangs: Kafka unreachable, a
listing that never answers, streams that never close. Kubernetes sends SIGKILL
after its grace period; the bridge must be gone before, with the log naming
what it left undone."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import orjson
import pytest
from support.e2e import bridge_config, config_env, run_bridge
from support.kafka import KafkaOutage
from support.waiting import eventually

from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, HttpFaultRule, TaskProfile
from bridge.runner import SHUTDOWN_MARGIN_S

SHUTDOWN_TIMEOUT_S = 3.0
#: the process's own start-up and exit, on a busy machine: slack, not a speed
SLACK_S = 10.0


@pytest.mark.timeout(120)
async def test_sigterm_exits_in_time_with_everything_hanging(
    kafka_outage: KafkaOutage, new_topic: Callable[[str], str]
) -> None:
    busy = TaskProfile(events_per_task=5000, event_interval_s=0.05, interval_jitter=0.0)
    async with Emulator(EmulatorSettings(tasks=busy, seed=2)) as emu:
        emu.update_stream(keepalive_s=0.2)  # the streams stay open, alive
        agent = emu.settings.agent_ids[0]
        config = bridge_config(
            emu,
            kafka_outage,
            new_topic,
            discovery={"agent_ids": [agent, "a-hangs"]},
            platform={"request_timeout_s": 60},
            pipeline={"shutdown_timeout_s": SHUTDOWN_TIMEOUT_S},
            coordination={"enabled": False},
        )
        env = config_env(config, XPANDER_BRIDGE_LOGGING__FORMAT="json")
        process = await run_bridge(env)
        try:
            for _ in range(3):
                emu.create_task(agent_id=agent)
            await eventually(
                lambda: emu.stats()["open_streams"] >= 3, timeout_s=30, what="streams open"
            )
            emu.set_faults(
                http=[HttpFaultRule(endpoints=["list_tasks"], ids=["a-hangs"], hang=True)]
            )
            await asyncio.sleep(0.5)  # the scenario: a listing now hangs
            kafka_outage.proxy.pause()  # and Kafka is gone, with events still coming
            await asyncio.sleep(1.0)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
            took = time.monotonic() - started
        finally:
            kafka_outage.proxy.resume()
            if process.returncode is None:
                process.kill()
    assert took <= SHUTDOWN_TIMEOUT_S + SHUTDOWN_MARGIN_S + SLACK_S, f"took {took:.1f} s"
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    # the bridge's last word (librdkafka's own lines may trail it while it lets go)
    last = [line for line in lines if not line["logger"].startswith("bridge.kafka.librdkafka")][-1]
    assert last["level"] == "error", last  # it says it left work undone
    assert process.returncode == 1
