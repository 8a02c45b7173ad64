"""The status check beside a reconnected stream (``StatusCheck``), on a real
stream of the emulator: it closes a silent stream of an ended task after the
grace period, and leaves every other stream alone."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from support.platform_source import Rig, wait_until

from bridge.emulator.settings import HttpFaultRule, TaskProfile
from bridge.errors import StreamInterrupted
from bridge.observability.metrics import ResyncOutcome
from bridge.platform.client import EventStream
from bridge.sources.platform.sse import SSEDecoder
from bridge.sources.platform.status_check import StatusCheck

pytestmark = pytest.mark.timeout(30)

AT_ONCE = TaskProfile(event_interval_s=0.0, pause_share=0.0, sub_task_share=0.0)
SLOW = TaskProfile(event_interval_s=60.0, interval_jitter=0.0, pause_share=0.0)


def resyncs(rig: Rig) -> dict[str, float]:
    counts = {
        outcome.value: rig.metric("xpander_bridge_resyncs_total", outcome=outcome.value)
        for outcome in ResyncOutcome
    }
    return {outcome: count for outcome, count in counts.items() if count}


class Reader:
    """What the streamer tells the check (``activity``): frames read, ``None``
    while it handles them."""

    def __init__(self) -> None:
        self.frames = 0
        self.handling = False
        self.decoder = SSEDecoder()

    def activity(self) -> int | None:
        return None if self.handling else self.frames


async def read_to_end(stream: EventStream, reader: Reader) -> tuple[bytes, bool]:
    """The whole body, and whether it ended by an interruption (not cleanly)."""
    body = b""
    try:
        async with asyncio.timeout(10):
            async for chunk in stream.chunks():
                body += chunk
                reader.frames += len(reader.decoder.feed(chunk))
    except StreamInterrupted:
        return body, True
    return body, False


async def test_a_silent_stream_of_an_ended_task_is_closed_after_the_grace_period(
    rig: Rig,
) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    # The stream opens (handshake only) and then says nothing at all.
    rig.emulator.set_faults(stall_after_events=0)
    state = rig.state_for(task)

    reader = Reader()
    async with rig.client.task_events(task["id"], None) as stream:
        check = StatusCheck(state, rig.client, rig.metrics, stream, 0.1, reader.activity)
        body, _ = await read_to_end(stream, reader)  # only returns once the check closed it
        snapshot = await check.settle()

    assert b'"connected"' in body and b"task_finished" not in body
    assert check.closed_stream
    assert snapshot is not None
    assert (snapshot["id"], snapshot["status"]) == (task["id"], "stopped")
    assert resyncs(rig) == {}  # the streamer counts the terminal resync when it emits it


async def test_an_ended_task_whose_stream_delivers_its_end_is_left_alone(rig: Rig) -> None:
    # A server that replays the whole history to a connection without
    # Last-Event-ID: the stream itself delivers task_finished.
    rig.emulator.settings.stream.replay = "full"
    rig.emulator.settings.stream.start_on_subscribe = False
    task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)
    await rig.emulator.wait_finished(task["id"])
    state = rig.state_for(task)
    decoder = SSEDecoder()

    reader = Reader()
    async with rig.client.task_events(task["id"], None) as stream:
        check = StatusCheck(state, rig.client, rig.metrics, stream, 5.0, reader.activity)
        async with asyncio.timeout(10):
            async for chunk in stream.chunks():
                for event in decoder.feed(chunk):
                    reader.frames += 1
                    sse_id = event.id if event.own_id else None
                    rig.normalizer.from_frame(state, event.data, sse_id, 0.0)
                if state.finished:
                    break
        snapshot = await check.settle()

    assert state.finished
    assert snapshot is None  # the end came from the stream: no second one
    assert not check.closed_stream
    assert resyncs(rig) == {}


@pytest.mark.parametrize(
    ("grace_s", "before_chunk_s", "per_event_s"),
    [
        # The bridge reads the replay slowly (a loaded host): 12 events 0.15 s
        # apart, 1.8 s, over three graces.
        (0.5, 0.0, 0.15),
        # The streamer's publish waits on a full queue (a slow broker) for five
        # graces: nothing is read meanwhile and no sequence moves, but the
        # stream is not silent.
        (0.2, 1.0, 0.0),
    ],
    ids=["read-slowly", "queue-full"],
)
async def test_a_replay_being_read_is_not_closed_past_the_grace(
    rig: Rig, grace_s: float, before_chunk_s: float, per_event_s: float
) -> None:
    # A resumed task that ended meanwhile: the server replays after
    # Last-Event-ID. Closing it after the grace lost every event not yet read
    # (seen as three-replica kill tests under load missing a task's events,
    # once all from event 2 on).
    rig.emulator.settings.stream.start_on_subscribe = False
    task = rig.emulator.create_task(events=12, outcome="completed", profile=AT_ONCE)
    await rig.emulator.wait_finished(task["id"])
    state = rig.state_for(task)
    decoder = SSEDecoder()

    reader = Reader()
    async with rig.client.task_events(task["id"], "0") as stream:
        check = StatusCheck(state, rig.client, rig.metrics, stream, grace_s, reader.activity)
        async with asyncio.timeout(10):
            async for chunk in stream.chunks():
                events = decoder.feed(chunk)
                reader.frames += len(events)
                reader.handling = True  # as the streamer: handling what it read
                await asyncio.sleep(before_chunk_s)
                for event in events:
                    await asyncio.sleep(per_event_s)
                    sse_id = event.id if event.own_id else None
                    rig.normalizer.from_frame(state, event.data, sse_id, 0.0)
                reader.handling = False
                if state.finished:
                    break
        snapshot = await check.settle()

    assert state.finished and not check.closed_stream
    assert state.sequence == 12  # every event, task_finished the last, all read
    assert snapshot is None


async def test_a_running_task_settles_to_nothing_and_counts_a_running_resync(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, outcome="completed", profile=SLOW)
    state = rig.state_for(task)

    reader = Reader()
    async with rig.client.task_events(task["id"], None) as stream:
        check = StatusCheck(state, rig.client, rig.metrics, stream, 0.01, reader.activity)
        await wait_until(
            lambda: rig.emulator.inbox.answers["get 200"] == 1, "the status check's fetch"
        )
        # The task ends only now: a check that closed the stream of a running
        # task would cut this off.
        rig.emulator.engine.stop(rig.run_of(task["id"]))
        body, interrupted = await read_to_end(stream, reader)
        snapshot = await check.settle()

    assert b"task_finished" in body and not interrupted
    assert snapshot is None
    assert not check.closed_stream
    assert resyncs(rig) == {"running": 1}


async def test_a_failed_status_fetch_settles_to_nothing(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.engine.stop(rig.run_of(task["id"]))
    rig.emulator.set_faults(http=[HttpFaultRule(endpoints=["get"], status=503, next_n=1)])
    state = rig.state_for(task)

    reader = Reader()
    async with rig.client.task_events(task["id"], None) as stream:
        check = StatusCheck(state, rig.client, rig.metrics, stream, 0.01, reader.activity)
        body, interrupted = await read_to_end(stream, reader)  # the server ends it: nothing to send
        snapshot = await check.settle()

    assert not interrupted and b"task_finished" not in body
    assert snapshot is None
    assert not check.closed_stream
    assert rig.emulator.inbox.answers["get 503"] == 1
    assert resyncs(rig) == {}


async def test_settling_while_cancelled_does_not_wait_for_the_fetch(rig: Rig) -> None:
    task = rig.emulator.create_task(events=12, profile=SLOW)
    rig.emulator.set_faults(delay_s=60.0, delay_endpoints=["get"])
    state = rig.state_for(task)
    settled: list[dict[str, object] | None] = []
    opened = asyncio.Event()

    async def follow() -> None:
        reader = Reader()
        async with rig.client.task_events(task["id"], None) as stream:
            check = StatusCheck(state, rig.client, rig.metrics, stream, 0.01, reader.activity)
            opened.set()
            try:
                await asyncio.Event().wait()  # reading, until shut down
            finally:
                settled.append(await check.settle())

    worker = asyncio.create_task(follow())
    await asyncio.wait_for(opened.wait(), 10)
    await wait_until(lambda: rig.emulator.inbox.calls["get"] == 1, "the fetch to be sent")
    worker.cancel()
    # A settle that waited for the fetch would wait the whole minute.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(worker, 10)

    assert worker.cancelled()
    assert settled == [None]
    assert resyncs(rig) == {}
