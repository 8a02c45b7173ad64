"""The poller (``TaskPoller.run``) of a task without an event stream, against
the emulator: one envelope per status change, ``task_finished`` at the end."""

from __future__ import annotations

import asyncio

import pytest
from support.platform_source import Rig, wait_until

from bridge.core.checkpoint import Checkpoint, now
from bridge.core.task import TaskState
from bridge.emulator.settings import HttpFaultRule, TaskProfile
from bridge.sources.platform.poller import TaskPoller
from bridge.sources.platform.stream import StreamOutcome

pytestmark = pytest.mark.timeout(30)

#: a task that keeps its status until the test changes it
SLOW = TaskProfile(event_interval_s=60.0, interval_jitter=0.0, pause_share=0.0)


async def polls_after(rig: Rig, count: int) -> None:
    """Wait until the task's status was fetched ``count`` more times."""
    target = rig.emulator.inbox.calls["get"] + count
    await wait_until(lambda: rig.emulator.inbox.calls["get"] >= target, f"{count} more polls")


async def envelopes_reach(rig: Rig, count: int) -> None:
    await wait_until(lambda: len(rig.published.envelopes()) >= count, f"{count} envelopes")


async def test_each_status_change_is_one_envelope_and_the_end_a_task_finished(rig: Rig) -> None:
    task = rig.emulator.create_task(events_streaming=False, profile=SLOW)
    run = rig.run_of(task["id"])
    state = rig.state_for(task)
    poller = asyncio.create_task(TaskPoller(state, rig.context).run())

    await envelopes_reach(rig, 1)  # the first poll's
    for count, status in enumerate(["executing", "paused", "executing"], start=2):
        await polls_after(rig, 2)  # polls that saw no change publish nothing
        assert len(rig.published.envelopes()) == count - 1
        rig.emulator.engine.update(run, status=status)
        await envelopes_reach(rig, count)
    await polls_after(rig, 2)
    rig.emulator.engine.update(run, status="completed")

    assert await asyncio.wait_for(poller, 10) is StreamOutcome.FINISHED
    envelopes = rig.published.envelopes(task["id"])
    assert [(e["type"], e["status"]) for e in envelopes] == [
        ("task_updated", "pending"),
        ("task_updated", "executing"),
        ("task_updated", "paused"),
        ("task_updated", "executing"),
        ("task_finished", "completed"),
    ]
    assert {e["source"] for e in envelopes} == {"poll"}
    assert [e["sequence"] for e in envelopes] == [1, 2, 3, 4, 5]
    assert envelopes[-1]["data"]["id"] == task["id"]
    assert state.finished and state.acks.done == 5


async def test_a_resumed_task_publishes_only_what_changed_after_its_checkpoint(rig: Rig) -> None:
    task = rig.emulator.create_task(events_streaming=False, profile=SLOW)
    run = rig.run_of(task["id"])
    rig.emulator.engine.update(run, status="executing")
    state = TaskState.from_checkpoint(
        Checkpoint(
            task_id=task["id"],
            agent_id=task["agent_id"],
            organization_id=task["organization_id"],
            sequence=3,
            last_sse_id=None,
            last_event_id="poll-3",
            last_stream_event_id=None,
            first_event_id=None,
            status="executing",
            finished=False,
            written_at=now(),
        )
    )
    poller = asyncio.create_task(TaskPoller(state, rig.context).run())

    await polls_after(rig, 2)
    assert rig.published.records == []  # still executing, as the checkpoint says
    rig.emulator.engine.update(run, status="failed")

    assert await asyncio.wait_for(poller, 10) is StreamOutcome.FINISHED
    [end] = rig.published.envelopes(task["id"])
    assert (end["type"], end["status"], end["source"]) == ("task_finished", "failed", "poll")
    assert end["sequence"] == 4


async def test_failed_polls_are_retried_and_publish_nothing(rig: Rig) -> None:
    task = rig.emulator.create_task(events_streaming=False, profile=SLOW)
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["get"], status=503, next_n=3)])
    state = rig.state_for(task)

    outcome = await asyncio.wait_for(TaskPoller(state, rig.context).run(), 10)

    assert outcome is StreamOutcome.FINISHED
    assert rig.emulator.inbox.answers["get 503"] == 3
    [end] = rig.published.envelopes(task["id"])
    assert (end["type"], end["status"], end["sequence"]) == ("task_finished", "stopped", 1)


async def test_a_task_the_platform_forgot_is_dropped(rig: Rig) -> None:
    state = TaskState("no-such-task", "agent-emulator-1", rig.emulator.organization_id)

    outcome = await asyncio.wait_for(TaskPoller(state, rig.context).run(), 10)

    assert outcome is StreamOutcome.NOT_FOUND
    assert rig.metric("xpander_bridge_tasks_dropped_total", reason="not_found") == 1
    assert rig.published.records == []
