"""The task supervisor: one worker per followed task (a stream, or a poller),
started from real listing items of the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from support.platform_source import Rig, wait_until

from bridge.core.checkpoint import Checkpoint, now
from bridge.core.task import TaskState
from bridge.emulator.settings import HttpFaultRule, TaskProfile
from bridge.sources.platform.supervisor import TaskSupervisor

pytestmark = pytest.mark.timeout(30)

AGENT = "agent-emulator-1"
#: a task that stays at its first status for a minute unless a test moves it
SLOW = TaskProfile(event_interval_s=60.0, interval_jitter=0.0, pause_share=0.0)


async def listed(rig: Rig, task_id: str) -> dict[str, Any]:
    """The task's item in its agent's listing, as discovery gets it."""
    for item in await rig.client.list_agent_tasks(AGENT):
        if item["id"] == task_id:
            return item
    raise AssertionError(f"{task_id} is not listed")


def tracked(rig: Rig, mode: str) -> float:
    return rig.metric("xpander_bridge_tracked_tasks", mode=mode)


async def idle(supervisor: TaskSupervisor) -> None:
    await wait_until(lambda: supervisor.followed == 0, "every worker to end")


async def test_follow_is_idempotent(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, outcome="completed")
    item = await listed(rig, task["id"])
    seen: list[TaskState] = []
    supervisor = TaskSupervisor(rig.context, on_follow=seen.append)

    supervisor.follow(item)
    supervisor.follow(item)
    assert supervisor.followed == 1
    await idle(supervisor)
    supervisor.follow(item)  # a listing that still shows it (as pending, even)

    assert supervisor.followed == 0
    assert supervisor.is_known(task["id"])  # remembered as ended
    assert [state.task_id for state in seen] == [task["id"]]
    assert seen[0].finished
    assert rig.run_of(task["id"]).connections == 1
    assert rig.streamed(task["id"]) == rig.emitted(task["id"])


async def test_a_task_already_terminal_in_the_listing_gets_its_end_once(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    item = await listed(rig, task["id"])
    assert item["status"] == "stopped"
    supervisor = TaskSupervisor(rig.context)

    supervisor.follow(item)
    supervisor.follow(item)
    await idle(supervisor)
    supervisor.follow(item)
    supervisor.finish_unseen(item)
    await idle(supervisor)

    [end] = rig.published.envelopes(task["id"])
    assert (end["type"], end["source"], end["status"]) == ("task_finished", "resync", "stopped")
    assert end["sequence"] == 1
    assert rig.run_of(task["id"]).connections == 0  # no stream for a task that had ended
    assert supervisor.is_known(task["id"])


async def test_finish_unseen_numbers_the_end_after_the_checkpoint(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.engine.update(rig.run_of(task["id"]), status="failed")
    item = await listed(rig, task["id"])
    checkpoint = Checkpoint(
        task_id=task["id"],
        agent_id=AGENT,
        organization_id=task["organization_id"],
        sequence=7,
        last_sse_id="7",
        last_event_id="e7",
        last_stream_event_id="e7",
        first_event_id="e1",
        status="executing",
        finished=False,
        written_at=now(),
    )
    seen: list[TaskState] = []
    supervisor = TaskSupervisor(rig.context, on_follow=seen.append)

    supervisor.finish_unseen(item, checkpoint)
    await idle(supervisor)

    [end] = rig.published.envelopes(task["id"])
    assert (end["type"], end["status"], end["sequence"]) == ("task_finished", "failed", 8)
    assert [state.task_id for state in seen] == [task["id"]]
    assert seen[0].acks.done == 8


async def test_release_stops_only_the_selected_workers(rig: Rig) -> None:
    tasks = [rig.emulator.create_task(events=12, profile=SLOW)["id"] for _ in range(3)]
    first, second, third = tasks
    items = {task_id: await listed(rig, task_id) for task_id in tasks}
    seen: dict[str, TaskState] = {}
    supervisor = TaskSupervisor(rig.context, on_follow=lambda s: seen.update({s.task_id: s}))
    for item in items.values():
        supervisor.follow(item)

    def subscribers() -> list[int]:
        return [rig.run_of(task_id).subscribers for task_id in tasks]

    await wait_until(lambda: subscribers() == [1, 1, 1], "three open streams")
    assert tracked(rig, "stream") == 3

    released = await supervisor.release(lambda task_id: task_id in {first, second})

    assert sorted(state.task_id for state in released) == sorted([first, second])
    assert all(state is seen[state.task_id] for state in released)  # the followed states
    await wait_until(lambda: subscribers() == [0, 0, 1], "the released streams to close")
    assert supervisor.followed == 1
    assert not supervisor.is_known(first)  # ownership moved: not remembered as ended
    assert supervisor.is_known(third)
    assert tracked(rig, "stream") == 1
    assert "task_finished" not in rig.published.types()  # no end invented for a release
    await supervisor.stop()


async def test_stop_stops_every_worker_and_refuses_new_follows(rig: Rig) -> None:
    tasks = [rig.emulator.create_task(events=12, profile=SLOW)["id"] for _ in range(2)]
    late = rig.emulator.create_task(events=12, profile=SLOW)["id"]
    items = {task_id: await listed(rig, task_id) for task_id in [*tasks, late]}
    seen: list[str] = []
    supervisor = TaskSupervisor(rig.context, on_follow=lambda s: seen.append(s.task_id))
    for task_id in tasks:
        supervisor.follow(items[task_id])
    await wait_until(lambda: all(rig.run_of(t).subscribers == 1 for t in tasks), "two open streams")

    stopped = await supervisor.stop()

    assert sorted(state.task_id for state in stopped) == sorted(tasks)
    assert supervisor.followed == 0
    supervisor.follow(items[late])
    supervisor.finish_unseen(items[late])
    assert supervisor.followed == 0
    assert not supervisor.is_known(late)
    assert seen == tasks
    await wait_until(
        lambda: all(rig.run_of(t).subscribers == 0 for t in tasks), "the streams to close"
    )
    assert rig.run_of(late).connections == 0
    assert tracked(rig, "stream") == 0


async def test_on_follow_sees_each_new_state_already_resumed(rig: Rig) -> None:
    fresh = rig.emulator.create_task(events=12, profile=SLOW)["id"]
    resumed = rig.emulator.create_task(events=12, profile=SLOW)["id"]
    checkpoint = Checkpoint(
        task_id=resumed,
        agent_id=AGENT,
        organization_id=rig.emulator.organization_id,
        sequence=4,
        last_sse_id="4",
        last_event_id="e4",
        last_stream_event_id="e4",
        first_event_id="e1",
        status="executing",
        finished=False,
        written_at=now(),
    )
    seen: list[tuple[str, int, str | None]] = []
    supervisor = TaskSupervisor(
        rig.context, on_follow=lambda s: seen.append((s.task_id, s.sequence, s.acked_sse_id))
    )

    supervisor.follow(await listed(rig, fresh))
    supervisor.follow(await listed(rig, resumed), checkpoint)
    supervisor.follow(await listed(rig, fresh))

    assert seen == [(fresh, 0, None), (resumed, 4, "4")]
    await supervisor.stop()


@pytest.mark.parametrize("refusal", ["no stream", "stream refused"])
async def test_a_task_whose_stream_is_refused_is_polled_to_its_end(rig: Rig, refusal: str) -> None:
    streaming = refusal == "stream refused"
    if streaming:
        rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["stream"], status=422, next_n=1)])
    task = rig.emulator.create_task(events=12, events_streaming=streaming, profile=SLOW)
    item = await listed(rig, task["id"])
    assert "events_streaming" not in item  # a listing does not say: the stream is tried
    supervisor = TaskSupervisor(rig.context)

    supervisor.follow(item)
    await wait_until(lambda: len(rig.published.envelopes()) == 1, "the first poll")
    assert tracked(rig, "poll") == 1 and tracked(rig, "stream") == 0
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    await idle(supervisor)

    envelopes = rig.published.envelopes(task["id"])
    assert [(e["type"], e["status"], e["source"]) for e in envelopes] == [
        ("task_updated", "pending", "poll"),
        ("task_finished", "stopped", "poll"),
    ]
    assert rig.run_of(task["id"]).connections == 0
    assert tracked(rig, "poll") == 0
    assert supervisor.is_known(task["id"])


async def test_an_end_that_could_not_be_fetched_is_followed_again_later(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    item = await listed(rig, task["id"])
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["get"], status=503, next_n=1)])
    supervisor = TaskSupervisor(rig.context)

    supervisor.follow(item)
    await idle(supervisor)
    assert rig.published.records == []
    assert not supervisor.is_known(task["id"])  # forgotten: the next listing brings it back
    supervisor.follow(item)
    await idle(supervisor)

    [end] = rig.published.envelopes(task["id"])
    assert (end["type"], end["source"]) == ("task_finished", "resync")
