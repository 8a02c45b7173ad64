"""The per-agent metrics of a running bridge: the emulator on a real port, a
real broker, the bridge in-process, its numbers against what the emulator did."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.e2e import all_finished, bridge_config, discovery_ready, expected_events
from support.kafka import KafkaService
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile
from bridge.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(90)


def total(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of every series ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_durations_tokens_and_tool_calls_match_what_the_platform_did(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    scenario = ScenarioSettings(
        task_count=12,
        arrival_interval_s=0.01,
        streaming_share=0.75,
        profile=TaskProfile(events_per_task=15, event_interval_s=0.003, events_jitter=0.3),
    )
    settings = EmulatorSettings(scenario=scenario, seed=5)
    async with Emulator(settings) as emu, Bridge(bridge_config(emu, kafka, new_topic)) as bridge:
        await discovery_ready(bridge)
        emu.start_scenario(emu.settings.scenario)
        await eventually(all_finished(emu, 12), timeout_s=40, what="every task to finish")
        tasks = [emu.control.task(t["id"]) or {} for t in emu.control.tasks()]  # full Tasks
        metrics = bridge.metrics

        def finished_everywhere() -> bool:
            ended = total(metrics, "xpander_bridge_tasks_finished_total")
            return ended == len(tasks) and total(metrics, "xpander_bridge_agent_tasks") == 0

        await eventually(finished_everywhere, timeout_s=30, what="every task_finished counted")
        # Each finished task once, by its agent; nothing is left open or paused.
        assert total(metrics, "xpander_bridge_task_duration_seconds_count") == len(tasks)
        for agent in {t["agent_id"] for t in tasks}:
            mine = [t for t in tasks if t["agent_id"] == agent]
            count = "xpander_bridge_task_duration_seconds_count"
            assert total(metrics, count, agent_id=agent) == len(mine)
            prompt = sum((t["tokens"] or {}).get("prompt_tokens", 0) for t in mine)
            completion = sum((t["tokens"] or {}).get("completion_tokens", 0) for t in mine)
            assert prompt > 0
            tokens = "xpander_bridge_tokens_total"
            assert total(metrics, tokens, agent_id=agent, kind="prompt") == prompt
            assert total(metrics, tokens, agent_id=agent, kind="completion") == completion
        assert total(metrics, "xpander_bridge_oldest_paused_task_seconds") == 0
        # Tool calls: one per tool_call_result the streams carried.
        results = [
            event
            for events in expected_events(emu).values()
            for event in events
            if event[0] == "tool_call_result"
        ]
        assert results, "the scenario must call tools"
        assert total(metrics, "xpander_bridge_tool_calls_total") == len(results)
