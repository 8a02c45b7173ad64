"""The task streamer (``TaskStreamer.run``) against the emulator on a real port:
what it publishes, how it reconnects, and how each refusal ends it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from support.platform_source import Rig, open_rig, wait_until

from bridge.core.checkpoint import Checkpoint, now
from bridge.core.identity import event_id_for
from bridge.core.retry import Backoff, RetryPolicy
from bridge.core.task import TaskState
from bridge.emulator.settings import HttpFaultRule, TaskProfile
from bridge.errors import (
    AuthError,
    BridgeError,
    InvalidDataError,
    NotFoundError,
    RequestTimeoutError,
    StreamInterrupted,
    UnavailableError,
    error_for_status,
)
from bridge.observability.metrics import ReconnectReason
from bridge.sources.platform.stream import StreamOutcome, TaskStreamer, reconnect_reason

pytestmark = pytest.mark.timeout(30)

#: every event emitted at once (the task is done a moment after its first subscriber)
AT_ONCE = TaskProfile(event_interval_s=0.0, pause_share=0.0, sub_task_share=0.0)
#: a task that stays at its first status for a minute unless a test moves it
SLOW = TaskProfile(event_interval_s=60.0, interval_jitter=0.0, pause_share=0.0)


async def stream(rig: Rig, state: TaskState, within_s: float = 10.0) -> StreamOutcome:
    async with asyncio.timeout(within_s):
        return await TaskStreamer(state, rig.context).run()


def reconnects(rig: Rig) -> dict[str, float]:
    """Every reconnect reason that was counted, with its count."""
    counts = {
        reason.value: rig.metric("xpander_bridge_stream_reconnects_total", reason=reason.value)
        for reason in ReconnectReason
    }
    return {reason: count for reason, count in counts.items() if count}


async def test_a_task_streamed_to_its_end_publishes_every_event_in_order(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, outcome="completed")
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    emitted = rig.emitted(task["id"])
    assert len(emitted) == 12 and emitted[-1][0] == "task_finished"
    assert rig.streamed(task["id"]) == emitted  # type, SSE id and data, in order
    envelopes = rig.published.envelopes(task["id"])
    assert [e["sequence"] for e in envelopes] == list(range(1, 13))
    assert {e["source"] for e in envelopes} == {"sse"}
    assert envelopes[-1]["status"] == "completed"
    # The acknowledgements moved the task's state up to its end.
    assert state.finished
    assert state.acks.done == 12
    assert state.acked_sse_id == "12"
    assert reconnects(rig) == {}
    assert rig.metric("xpander_bridge_active_streams") == 0
    assert rig.health.reachable_count == 1


async def test_a_dropped_connection_resumes_with_last_event_id_and_loses_nothing(
    rig: Rig,
) -> None:
    # Each connection is cut after 4 events; the task has emitted all 12 by
    # then, so a reconnect without Last-Event-ID would get none of the rest.
    rig.emulator.set_faults(drop_after_events=4, drop_max_per_task=2)
    task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    assert rig.streamed(task["id"]) == rig.emitted(task["id"])  # nothing lost or repeated
    envelopes = rig.published.envelopes(task["id"])
    assert [e["sequence"] for e in envelopes] == list(range(1, 13))
    assert {e["source"] for e in envelopes} == {"sse"}
    assert rig.run_of(task["id"]).connections == 3
    assert reconnects(rig) == {"network": 2}
    assert rig.metric("xpander_bridge_resyncs_total", outcome="terminal") == 0


async def test_an_idle_stream_is_reconnected_after_the_idle_timeout() -> None:
    async with open_rig(idle_timeout_s=0.5) as rig:
        # The first connection goes silent (open, no bytes) after 3 events.
        rig.emulator.set_faults(stall_after_events=3, stall_max_per_task=1)
        task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)
        state = rig.state_for(task)

        assert await stream(rig, state) is StreamOutcome.FINISHED

        assert rig.streamed(task["id"]) == rig.emitted(task["id"])
        assert reconnects(rig) == {"idle_timeout": 1}
        assert rig.run_of(task["id"]).connections == 2


async def test_a_task_that_ended_while_the_stream_was_down_ends_from_a_resync(rig: Rig) -> None:
    # A server that neither replays nor honours Last-Event-ID: after the drop
    # the task has ended and the new connection has nothing to say.
    rig.emulator.settings.stream.honour_last_event_id = False
    rig.emulator.set_faults(drop_after_events=4, drop_max_per_task=1)
    task = rig.emulator.create_task(events=12, outcome="failed", profile=AT_ONCE)
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    envelopes = rig.published.envelopes(task["id"])
    assert rig.streamed(task["id"])[:4] == rig.emitted(task["id"])[:4]
    assert [e["sequence"] for e in envelopes] == [1, 2, 3, 4, 5]
    end = envelopes[-1]
    assert (end["type"], end["source"], end["status"]) == ("task_finished", "resync", "failed")
    assert end["data"]["id"] == task["id"]
    assert state.finished and state.acks.done == 5
    assert rig.metric("xpander_bridge_resyncs_total", outcome="terminal") == 1
    assert reconnects(rig) == {"network": 1}


async def test_a_task_that_ended_while_its_stream_could_not_connect_ends_from_a_resync(
    rig: Rig,
) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["stream"], status=503, next_n=1)])
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    # The status was fetched at once after the failed connect: no stream was
    # ever opened to learn the task had ended.
    assert rig.run_of(task["id"]).connections == 0
    [end] = rig.published.envelopes(task["id"])
    assert (end["type"], end["source"], end["status"]) == ("task_finished", "resync", "stopped")
    assert end["sequence"] == 1
    assert reconnects(rig) == {"server_error": 1}
    assert rig.metric("xpander_bridge_resyncs_total", outcome="terminal") == 1


async def test_a_task_the_platform_does_not_know_is_dropped_as_not_found(rig: Rig) -> None:
    state = TaskState("no-such-task", "agent-emulator-1", rig.emulator.organization_id)

    assert await stream(rig, state) is StreamOutcome.NOT_FOUND

    assert rig.metric("xpander_bridge_tasks_dropped_total", reason="not_found") == 1
    assert reconnects(rig) == {"not_found": 1}
    assert rig.published.records == []
    assert rig.emulator.inbox.answers["stream 404"] == 1
    assert rig.emulator.inbox.answers["get 404"] == 1


async def test_a_running_task_without_a_stream_is_not_streamable(rig: Rig) -> None:
    task = rig.emulator.create_task(events_streaming=False, profile=SLOW)
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.NOT_STREAMABLE

    assert rig.metric("xpander_bridge_resyncs_total", outcome="running") == 1
    assert rig.metric("xpander_bridge_tasks_dropped_total", reason="not_found") == 0
    assert rig.published.records == []


@pytest.mark.parametrize("status", [400, 409, 422])
async def test_a_refused_stream_is_not_streamable(rig: Rig, status: int) -> None:
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["stream"], status=status, next_n=1)])
    task = rig.emulator.create_task(events=12)
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.NOT_STREAMABLE

    assert rig.emulator.inbox.calls["stream"] == 1  # not retried
    assert reconnects(rig) == {}
    assert rig.published.records == []
    assert rig.health.refusals == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_api_key_is_reported_and_the_stream_retried(rig: Rig, status: int) -> None:
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["stream"], status=status, next_n=1)])
    task = rig.emulator.create_task(events=12, outcome="completed")
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    assert [error.status for error in rig.health.refusals] == [status]
    assert isinstance(rig.health.refusals[0], AuthError)
    assert reconnects(rig) == {"auth": 1}
    assert rig.streamed(task["id"]) == rig.emitted(task["id"])
    assert rig.health.reachable_count == 1  # the second connection was answered


async def test_a_task_resumed_from_a_checkpoint_continues_after_its_last_event_id(
    rig: Rig,
) -> None:
    rig.emulator.settings.stream.start_on_subscribe = False
    task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)
    await rig.emulator.wait_finished(task["id"])
    task_id = task["id"]
    checkpoint = Checkpoint(
        task_id=task_id,
        agent_id=task["agent_id"],
        organization_id=task["organization_id"],
        sequence=5,
        last_sse_id="5",
        last_event_id=event_id_for(task_id, b"", "5"),
        last_stream_event_id=event_id_for(task_id, b"", "5"),
        first_event_id=event_id_for(task_id, b"", "1"),
        status="executing",
        finished=False,
        written_at=now(),
    )
    state = TaskState.from_checkpoint(checkpoint)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    assert rig.streamed(task_id) == rig.emitted(task_id)[5:]
    assert [e["sequence"] for e in rig.published.envelopes(task_id)] == list(range(6, 13))
    assert rig.metric("xpander_bridge_resumes_total", kind="by_id") == 1
    assert state.acks.done == 12


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (error_for_status(404, "gone"), ReconnectReason.NOT_FOUND),
        (error_for_status(401, "key"), ReconnectReason.AUTH),
        (error_for_status(403, "key"), ReconnectReason.AUTH),
        (error_for_status(400, "bad"), None),
        (error_for_status(409, "conflict"), None),
        (error_for_status(422, "invalid"), None),
        (InvalidDataError("not JSON"), None),
        (RequestTimeoutError("idle"), ReconnectReason.IDLE_TIMEOUT),
        (error_for_status(408, "timeout"), ReconnectReason.IDLE_TIMEOUT),
        (error_for_status(429, "slow down", retry_after=1.0), ReconnectReason.RATE_LIMITED),
        (error_for_status(500, "oops"), ReconnectReason.SERVER_ERROR),
        (error_for_status(503, "busy"), ReconnectReason.SERVER_ERROR),
        (UnavailableError("task_events: ClientConnectorError"), ReconnectReason.NETWORK),
        (StreamInterrupted("stream interrupted: ClientPayloadError"), ReconnectReason.NETWORK),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_reconnect_reason_maps_each_error(
    error: BridgeError, reason: ReconnectReason | None
) -> None:
    assert reconnect_reason(error) is reason


def test_not_found_is_a_reconnect_though_it_is_a_rejection() -> None:
    # NotFoundError is a RejectedError: the order of the checks matters.
    error = NotFoundError("gone", status=404)
    assert reconnect_reason(error) is ReconnectReason.NOT_FOUND


class _RecordingBackoff(Backoff):
    """Remembers the attempt number each delay was asked at."""

    def __init__(self, base: float, cap: float, log: list[int]) -> None:
        super().__init__(base, cap)
        self.log = log

    def next_delay(self, hint: float | None = None) -> float:
        self.log.append(self.attempt)
        return super().next_delay(hint)


@dataclass(frozen=True, slots=True)
class _RecordingPolicy(RetryPolicy):
    attempts: list[int] = field(default_factory=list)

    def backoff(self, *, attempt: int = 0) -> Backoff:
        return _RecordingBackoff(self.initial_s, self.max_s, self.attempts)


async def test_a_connection_that_made_progress_starts_the_back_off_over() -> None:
    policy = _RecordingPolicy(0.01, 0.05)
    async with open_rig(reconnect=policy) as rig:
        # Every connection delivers 3 new events, then breaks.
        rig.emulator.set_faults(drop_after_events=3)
        task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)

        assert await stream(rig, rig.state_for(task)) is StreamOutcome.FINISHED

        assert rig.streamed(task["id"]) == rig.emitted(task["id"])
        assert reconnects(rig) == {"network": 3}
        # Each reconnect follows a connection that made progress: each waits
        # the first back-off step, as after a clean end.
        assert policy.attempts == [0, 0, 0]


async def test_a_stream_that_lingers_after_the_end_with_keep_alives_only_is_checked() -> None:
    async with open_rig(quiet_check_s=0.3, resync_grace_s=0.2) as rig:
        # The server never sends task_finished and never closes the stream: only
        # keep-alives, which count as life for the idle timeout (10 s here).
        rig.emulator.update_stream(linger_after_end=True, keepalive_s=0.05)
        task = rig.emulator.create_task(events=12, outcome="failed", profile=AT_ONCE)
        state = rig.state_for(task)

        assert await stream(rig, state, within_s=5.0) is StreamOutcome.FINISHED

        envelopes = rig.published.envelopes(task["id"])
        assert envelopes[-1]["type"] == "task_finished"
        assert envelopes[-1]["source"] == "resync" and envelopes[-1]["status"] == "failed"
        assert [e["sequence"] for e in envelopes] == list(range(1, len(envelopes) + 1))
        assert rig.metric("xpander_bridge_active_streams") == 0


async def test_a_quiet_running_task_is_checked_and_left_streaming() -> None:
    async with open_rig(quiet_check_s=0.2) as rig:
        rig.emulator.update_stream(keepalive_s=0.05)
        task = rig.emulator.create_task(events=12, profile=SLOW)
        state = rig.state_for(task)
        streamer = asyncio.create_task(TaskStreamer(state, rig.context).run())
        await wait_until(
            lambda: rig.metric("xpander_bridge_resyncs_total", outcome="running") >= 2,
            "two status checks of the quiet stream",
        )
        assert not streamer.done() and rig.run_of(task["id"]).connections == 1
        streamer.cancel()
        await asyncio.gather(streamer, return_exceptions=True)


async def test_a_task_without_a_checkpoint_gets_its_stream_from_the_start(rig: Rig) -> None:
    # The task ran before anyone here listened (its owner died before its first
    # checkpoint, or the bridge was down): a server that keeps history and
    # honours Last-Event-ID sends it all on the first connection.
    rig.emulator.update_stream(start_on_subscribe=False)
    task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)
    await wait_until(lambda: rig.run_of(task["id"]).finished, "the task to run unobserved")
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    assert rig.streamed(task["id"]) == rig.emitted(task["id"])
    envelopes = rig.published.envelopes(task["id"])
    assert [e["sequence"] for e in envelopes] == list(range(1, 13))


async def test_the_start_is_asked_for_again_when_the_first_connection_fails(rig: Rig) -> None:
    # A busy host or a 503 on the first try must not cost the task's start.
    rig.emulator.update_stream(start_on_subscribe=False)
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["stream"], status=503, next_n=2)])
    steady = TaskProfile(event_interval_s=0.05, interval_jitter=0.0, pause_share=0.0)
    task = rig.emulator.create_task(events=20, outcome="completed", profile=steady)
    await wait_until(lambda: len(rig.emitted(task["id"])) >= 3, "events sent unobserved")
    state = rig.state_for(task)

    assert await stream(rig, state) is StreamOutcome.FINISHED

    assert rig.streamed(task["id"]) == rig.emitted(task["id"])
