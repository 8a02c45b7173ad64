"""Tasks that wait for a human: the plan's pause lasts ``pause_s``, the task
is seen paused (REST and stream) for that long, then resumes and ends; the
demo scenario has such tasks."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime

import pytest

from bridge.emulator.lifecycle import build_plan
from bridge.emulator.scenarios import DEMO_PAUSE_S, DEMO_PAUSE_SHARE, preset
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, TaskProfile

pytestmark = pytest.mark.timeout(20)


def _profile(**fields: float | None) -> TaskProfile:
    return TaskProfile(
        events_per_task=20,
        events_jitter=0.0,
        event_interval_s=0.01,
        interval_jitter=0.0,
        pause_share=1.0,
        **fields,
    )


@pytest.mark.parametrize("streaming", [True, False])
def test_the_pause_lasts_pause_s(streaming: bool) -> None:
    plan = build_plan(random.Random(5), _profile(pause_s=42.0), streaming=streaming)
    resume = plan.steps.index("resume")
    assert plan.steps[resume - 1] == "pause"
    assert plan.delays[resume] == 42.0
    assert sum(plan.delays) == pytest.approx(42.0 + 0.01 * (plan.event_count - 3), abs=0.2)


def test_without_pause_s_a_pause_is_three_gaps() -> None:
    plan = build_plan(random.Random(5), _profile(), streaming=True)
    assert plan.delays[plan.steps.index("resume")] == pytest.approx(0.03)


def test_the_same_seed_draws_the_same_plan_whatever_pause_s() -> None:
    # pause_s changes a delay, not what is drawn: the other tasks stay the same
    first = build_plan(random.Random(9), _profile(pause_s=5.0), streaming=True)
    second = build_plan(random.Random(9), _profile(), streaming=True)
    assert first.steps == second.steps and first.outcome == second.outcome


async def test_a_task_stays_paused_for_pause_s_then_resumes_and_ends() -> None:
    settings = EmulatorSettings(stream={"start_on_subscribe": False})
    settings.tasks = _profile(pause_s=0.5)
    async with Emulator(settings) as emu:
        wire = emu.create_task(outcome="completed")
        seen_paused = None
        for _ in range(500):
            task = emu.task(wire["id"])
            assert task is not None
            if task["status"] == "paused":
                seen_paused = time.monotonic()
                assert task["paused_at"] is not None
                break
            await asyncio.sleep(0.01)
        assert seen_paused is not None, "the task never paused"
        final = await emu.wait_finished(wire["id"], 10)
        assert final["status"] == "completed"
        updates = [e.payload for e in emu.events(wire["id"]) if e.type == "task_updated"]
        statuses = [u["data"]["status"] for u in updates]
        assert statuses[:3] == ["executing", "paused", "executing"]
        paused, resumed = (datetime.fromisoformat(u["time"]) for u in updates[1:3])
        # the pause is the plan's: a sleep, so at least that long whatever the load
        # (less a scheduler tick: it runs on the loop's clock, the stamps are wall time)
        assert (resumed - paused).total_seconds() >= 0.45
        assert updates[1]["data"]["paused_at"] is not None


def test_the_demo_scenario_pauses_some_tasks_for_a_while() -> None:
    profile = preset("demo").profile
    assert 0 < profile.pause_share == DEMO_PAUSE_SHARE < 0.5
    assert profile.pause_s == DEMO_PAUSE_S
    # a pause is seen for seconds, many events long, and still ends in a demo's minute
    assert 10 * profile.event_interval_s < DEMO_PAUSE_S <= 60
    tuned = preset("demo", pause_share=0.5, pause_s=3).profile
    assert (tuned.pause_share, tuned.pause_s) == (0.5, 3.0)
