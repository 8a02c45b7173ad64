"""Fetching an ended task's activity log: against the emulator on a real port,
with the real client and normalizer; what each answer makes the fetch do."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
from support.emulators import completing_tasks
from support.platform_source import Rig, open_rig, wait_until

from bridge.config import KafkaConfig, TopicsConfig
from bridge.core.checkpoint import Checkpoint
from bridge.core.task import TaskState
from bridge.emulator.settings import EmulatorSettings, HttpFaultRule
from bridge.envelope import read_activity
from bridge.sources.platform.activity import publish_activity
from bridge.sources.platform.context import WorkerContext
from bridge.sources.platform.supervisor import TaskSupervisor
from bridge.transforms.activity import ActivityRecords
from bridge.transforms.normalize import Normalizer

pytestmark = pytest.mark.timeout(30)

TOPICS = TopicsConfig()


def with_activity(rig: Rig) -> WorkerContext:
    normalizer = Normalizer(
        TOPICS,
        KafkaConfig(),
        rig.metrics,
        activity=ActivityRecords(
            TOPICS.activity, TOPICS.dlq, max_part_bytes=524_288, max_request_bytes=1_048_576
        ),
    )
    return dataclasses.replace(rig.context, transform=normalizer)


def settings() -> EmulatorSettings:
    emulator = EmulatorSettings()
    emulator.tasks = completing_tasks(8)
    return emulator


async def ended(rig: Rig) -> TaskState:
    task = rig.emulator.create_task(events=8, events_streaming=False)
    await rig.emulator.control.wait_finished(task["id"], 10)
    state = rig.state_for(task)
    state.finished = state.activity_due = True
    return state


async def test_refused_then_answered_reports_refusal_and_publishes_the_thread() -> None:
    async with open_rig(settings()) as rig:
        context = with_activity(rig)
        state = await ended(rig)
        rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["activity"], status=401, next_n=2)])
        await publish_activity(state, context)
        assert len(rig.health.refusals) == 2
        assert rig.metric("xpander_bridge_activity_fetch_failures_total", reason="refused") == 2
        (record,) = [r for r in rig.published.records if r.topic == TOPICS.activity]
        envelope = read_activity(record.value, record.headers)
        assert envelope.task_id == state.task_id and envelope.data["id"] == state.task_id
        assert not state.activity_due, "settled once written"
        assert rig.metric("xpander_bridge_activity_bytes_count") == 1


async def test_a_404_is_dead_lettered_and_settles_the_task() -> None:
    async with open_rig(settings()) as rig:
        context = with_activity(rig)
        state = await ended(rig)
        rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["activity"], status=404, share=1)])
        await publish_activity(state, context)
        (record,) = rig.published.records
        assert record.topic == TOPICS.dlq
        assert dict(record.headers)["dlq.reason"] == b"activity_rejected"
        assert not state.activity_due
        assert rig.metric("xpander_bridge_activity_fetch_failures_total", reason="rejected") == 1
        outcome = rig.metric("xpander_bridge_activity_threads_total", outcome="rejected")
        assert outcome == 1


async def test_nothing_is_fetched_when_not_due_or_without_agent() -> None:
    async with open_rig(settings()) as rig:
        context = with_activity(rig)
        state = await ended(rig)
        state.activity_due = False
        await publish_activity(state, context)
        no_agent = TaskState(state.task_id, None, None)
        no_agent.activity_due = True
        await publish_activity(no_agent, context)
        assert rig.published.records == []
        requests = rig.metric(
            "xpander_bridge_platform_requests_total",
            endpoint="get_activity_log",
            status_class="2xx",
        )
        assert requests == 0


async def test_the_supervisor_publishes_a_due_thread_from_a_checkpoint() -> None:
    async with open_rig(settings()) as rig:
        context = with_activity(rig)
        task = rig.emulator.create_task(events=8, events_streaming=False)
        await rig.emulator.control.wait_finished(task["id"], 10)
        followed: list[TaskState] = []
        supervisor = TaskSupervisor(context, on_follow=followed.append)
        due = Checkpoint(
            task["id"], task["agent_id"], task["organization_id"], 9, None, "e9", None, None,
            "completed", True, 1.0, True,
        )  # fmt: skip
        supervisor.fetch_activity(due)
        supervisor.fetch_activity(due)  # idempotent while it runs
        await wait_until(lambda: supervisor.followed == 0, "the activity-only worker to end")
        (record,) = rig.published.records
        assert orjson.loads(record.value or b"")["task_id"] == task["id"]
        assert followed[0].sequence == 9 and not followed[0].activity_due
        assert supervisor.is_known(task["id"]), "remembered as ended"
        done = dataclasses.replace(due, activity_due=False)
        supervisor.fetch_activity(done)  # nothing due: no worker
        assert supervisor.followed == 0


async def _ended_tasks(rig: Rig, count: int) -> list[TaskState]:
    return [await ended(rig) for _ in range(count)]


async def test_fetches_wait_their_turn_beyond_the_bound() -> None:
    async with open_rig(settings(), activity_fetches=2) as rig:
        context = with_activity(rig)
        first, second, third = await _ended_tasks(rig, 3)
        hanging = [first.task_id, second.task_id]
        rig.emulator.set_faults(
            http=[HttpFaultRule(endpoints=["activity"], ids=hanging, hang=True, share=1)]
        )
        fetching = [
            asyncio.create_task(publish_activity(state, context)) for state in (first, second)
        ]
        await wait_until(
            lambda: rig.emulator.inbox.calls["activity"] == 2, "both hanging fetches to be sent"
        )
        third_fetch = asyncio.create_task(publish_activity(third, context))
        await wait_until(
            lambda: rig.metric("xpander_bridge_activity_fetches_waiting") == 1,
            "the third fetch to wait for a slot",
        )
        await asyncio.sleep(0.2)
        assert rig.emulator.inbox.calls["activity"] == 2, "no third request while both slots hang"
        fetching[0].cancel()  # a slot comes free: the third goes
        await asyncio.wait_for(third_fetch, 10)
        assert [r.key for r in rig.published.records] == [third.task_id.encode()]
        assert rig.metric("xpander_bridge_activity_fetches_waiting") == 0
        fetching[1].cancel()
        await asyncio.gather(*fetching, return_exceptions=True)


async def test_a_fetch_that_keeps_failing_holds_no_slot_while_it_backs_off() -> None:
    async with open_rig(settings(), activity_fetches=1) as rig:
        context = with_activity(rig)
        failing, *others = await _ended_tasks(rig, 3)
        rig.emulator.set_faults(
            http=[HttpFaultRule(endpoints=["activity"], ids=[failing.task_id], status=503, share=1)]
        )
        retrying = asyncio.create_task(publish_activity(failing, context))
        await wait_until(
            lambda: (
                rig.metric("xpander_bridge_activity_fetch_failures_total", reason="unavailable")
                >= 2
            ),
            "the failing fetch to retry",
        )
        for state in others:
            await asyncio.wait_for(publish_activity(state, context), 10)
        assert {r.key for r in rig.published.records} == {s.task_id.encode() for s in others}
        assert not retrying.done() and failing.activity_due
        retrying.cancel()
        await asyncio.gather(retrying, return_exceptions=True)
