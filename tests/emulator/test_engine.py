"""The lifecycle engine: determinism under the seed, plans, scenarios, children."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from bridge.emulator.lifecycle import build_plan
from bridge.emulator.scenarios import preset
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile
from bridge.platform.models import Task, TaskUpdateEvent
from bridge.wire import TERMINAL_STATUSES

_TIME_KEYS = {"time", "created_at", "updated_at", "started_at", "paused_at", "finished_at"}
_TIME_KEYS |= {"duration", "emitted_at"}


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in _TIME_KEYS}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _scenario_settings(seed: int) -> EmulatorSettings:
    profile = TaskProfile(events_per_task=15, event_interval_s=0.0)
    return EmulatorSettings(
        seed=seed,
        stream={"start_on_subscribe": False},
        scenario=ScenarioSettings(task_count=12, arrival_interval_s=0.0, profile=profile),
    )


async def _run_scenario(seed: int) -> list[tuple[str, str, Any]]:
    async with Emulator(_scenario_settings(seed)) as emu:
        for _ in range(200):
            top = [r for r in emu.engine.tasks.values() if not r.is_child]
            if len(top) == 12 and all(r.finished for r in emu.engine.tasks.values()):
                break
            await asyncio.sleep(0.01)
        out = []
        for run in emu.engine.tasks.values():
            out.append((run.id, run.status, _timeless(run.wire)))
            out += [(run.id, e.type, _timeless(e.payload)) for e in emu.events(run.id)]
        return out


async def test_same_seed_same_tasks_and_events() -> None:
    first = await _run_scenario(seed=7)
    second = await _run_scenario(seed=7)
    assert len(first) > 12 * 10
    assert first == second


async def test_other_seed_other_tasks() -> None:
    assert await _run_scenario(seed=1) != await _run_scenario(seed=2)


def test_plan_has_exact_event_count_and_forced_outcome() -> None:
    profile = TaskProfile(events_per_task=40, events_jitter=0.0, pause_share=1.0)
    plan = build_plan(random.Random(3), profile, streaming=True, outcome="error")
    assert plan.event_count == 40
    assert plan.outcome == "error"
    assert plan.steps[0] == "start" and plan.steps[-1] == "finish"
    assert plan.steps.index("pause") + 1 == plan.steps.index("resume")
    requests = plan.steps.count("tool_call_request")
    assert requests == plan.steps.count("tool_call_result")


def test_plan_without_streaming_keeps_status_steps_and_duration() -> None:
    profile = TaskProfile(events_per_task=30, events_jitter=0.0, interval_jitter=0.0)
    plan = build_plan(random.Random(1), profile, streaming=False)
    assert set(plan.steps) <= {"start", "executing", "pause", "resume", "finish"}
    assert sum(plan.delays) == pytest.approx(profile.event_interval_s * 30, rel=0.2)


async def test_task_goes_through_lifecycle_with_valid_events(emu: Emulator) -> None:
    wire = emu.create_task(events=30, outcome="failed")
    emu.engine.subscribe(emu.engine.tasks[wire["id"]])  # start it without a stream
    final = await emu.wait_finished(wire["id"])
    assert final["status"] == "failed"
    events = emu.events(wire["id"])
    assert len(events) == 30
    assert [e.id for e in events] == [str(i) for i in range(1, 31)]
    assert events[0].type == "task_created" and events[0].payload["data"]["status"] == "pending"
    assert events[1].payload["data"]["status"] == "executing"
    assert [e.type for e in events[-2:]] == ["task_updated", "task_finished"]
    for event in events:
        envelope = TaskUpdateEvent.model_validate_json(event.json)
        if envelope.type.startswith("task"):
            Task.model_validate(envelope.data)
    finished = Task.model_validate(events[-1].payload["data"])
    assert finished.status == "failed" and finished.finished_at is not None
    assert finished.tokens is not None and finished.result


async def test_non_streaming_task_changes_status_only() -> None:
    settings = EmulatorSettings()
    settings.tasks.event_interval_s = 0.001
    async with Emulator(settings) as emu:
        wire = emu.create_task(events_streaming=False, outcome="completed")
        final = await emu.wait_finished(wire["id"], 5)
        assert final["status"] == "completed"
        assert final["started_at"] and final["finished_at"]
        assert emu.events(wire["id"]) == []


async def test_scenario_mix_has_every_kind_of_task_and_event() -> None:
    profile = TaskProfile(
        events_per_task=40,
        event_interval_s=0.0,
        pause_share=0.3,
        fail_share=0.2,
        error_share=0.2,
        stop_share=0.2,
    )
    settings = EmulatorSettings(
        seed=3,
        stream={"start_on_subscribe": False},
        scenario=ScenarioSettings(
            task_count=40, arrival_interval_s=0.0, streaming_share=0.7, profile=profile
        ),
    )
    async with Emulator(settings) as emu:
        for _ in range(300):
            runs = list(emu.engine.tasks.values())
            if len([r for r in runs if not r.is_child]) == 40 and all(r.finished for r in runs):
                break
            await asyncio.sleep(0.01)
        runs = list(emu.engine.tasks.values())
        statuses = {r.status for r in runs}
        assert statuses <= TERMINAL_STATUSES
        assert {"completed", "failed", "error", "stopped"} <= statuses
        assert any(not r.streaming for r in runs)
        types = {e.type for r in runs for e in emu.events(r.id)}
        expected = {
            "task_created",
            "task_updated",
            "task_finished",
            "chunk",
            "tool_call_request",
            "tool_call_result",
            "think",
            "analyze",
            "plan_updated",
            "sub_agent_trigger",
            "context_status",
            "future_insight",
        }
        assert expected <= types
        assert any(r.wire["paused_at"] for r in runs)
        children = [r for r in runs if r.is_child]
        assert children
        parent = emu.engine.tasks[children[0].wire["parent_execution"]]
        assert children[0].id in parent.wire["sub_executions"]
        assert children[0].wire["triggering_agent_id"] == parent.agent_id


async def test_paused_tasks_emit_paused_then_executing() -> None:
    settings = EmulatorSettings(stream={"start_on_subscribe": False})
    settings.tasks = TaskProfile(event_interval_s=0.0, pause_share=1.0, events_per_task=20)
    async with Emulator(settings) as emu:
        wire = emu.create_task()
        await emu.wait_finished(wire["id"])
        statuses = [
            e.payload["data"]["status"] for e in emu.events(wire["id"]) if e.type == "task_updated"
        ]
        assert statuses[:3] == ["executing", "paused", "executing"]


def test_presets_match_benchmark_shapes() -> None:
    burst = preset("burst")
    assert burst.task_count == 400 and burst.profile.events_per_task == 100
    wide = preset("wide")
    assert wide.task_count == 2000 and wide.profile.events_per_task == 20
    steady = preset("steady", streams=100, rate=1000, duration_s=2)
    assert steady.task_count == 100
    assert steady.profile.event_interval_s == pytest.approx(0.1)
    assert steady.profile.stamp_emission
    with pytest.raises(ValueError, match="unknown scenario"):
        preset("nope")


async def test_stamp_emission_puts_time_in_envelope_and_data() -> None:
    settings = EmulatorSettings(stream={"start_on_subscribe": False})
    settings.tasks = TaskProfile(event_interval_s=0.0, stamp_emission=True)
    async with Emulator(settings) as emu:
        wire = emu.create_task()
        await emu.wait_finished(wire["id"])
        for event in emu.events(wire["id"]):
            payload = event.payload
            assert payload["emitted_at"] == pytest.approx(event.emitted_at)
            if isinstance(payload["data"], dict):
                assert payload["data"]["emitted_at"] == payload["emitted_at"]


async def test_history_limit_keeps_the_newest() -> None:
    settings = EmulatorSettings(stream={"start_on_subscribe": False, "history_limit": 10})
    settings.tasks = TaskProfile(event_interval_s=0.0, events_per_task=200, events_jitter=0.0)
    async with Emulator(settings) as emu:
        wire = emu.create_task()
        await emu.wait_finished(wire["id"])
        events = emu.events(wire["id"])
        assert 10 <= len(events) < 200
        assert events[-1].type == "task_finished" and events[-1].id == "200"


def test_settings_refuse_unknown_knobs() -> None:
    with pytest.raises(ValueError, match="extra"):
        EmulatorSettings.model_validate({"stream": {"replay_mode": "full"}})
