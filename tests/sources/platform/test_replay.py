"""The replay filter: a task resumed from a checkpoint, on a stream without SSE
ids, skips what a replaying server sends again and nothing else."""

from __future__ import annotations

import orjson
import pytest

from bridge.core.checkpoint import Checkpoint, now
from bridge.core.identity import event_id_for
from bridge.core.task import TaskState
from bridge.observability.metrics import Metrics, ResumeKind
from bridge.sources.platform.replay import ReplayFilter

TASK = "task-replay"


def frame(n: int, kind: str = "chunk") -> bytes:
    """The n-th event of the task's stream, as a server without ids sends it."""
    return orjson.dumps(
        {
            "type": kind,
            "task_id": TASK,
            "organization_id": "org",
            "time": f"2025-01-01T00:00:{n:02d}+00:00",
            "data": f"part {n}",
        }
    )


def connected(connection: int) -> bytes:
    return orjson.dumps({"type": "connected", "task_id": TASK, "data": {"connection": connection}})


#: the task's stream from its start: task_created, then chunks
HISTORY = [frame(1, "task_created"), *(frame(n) for n in range(2, 9))]


def resumed(
    *, up_to: int = 4, sse_id: str | None = None, first: bool = True, stream_event: bool = True
) -> TaskState:
    """A task resumed from a checkpoint that covers ``HISTORY[:up_to]``."""
    last = event_id_for(TASK, HISTORY[up_to - 1], None)
    checkpoint = Checkpoint(
        task_id=TASK,
        agent_id="agent",
        organization_id="org",
        sequence=up_to,
        last_sse_id=sse_id,
        last_event_id=last,
        last_stream_event_id=last if stream_event else None,
        first_event_id=event_id_for(TASK, HISTORY[0], None) if first else None,
        status="executing",
        finished=False,
        written_at=now(),
    )
    return TaskState.from_checkpoint(checkpoint)


def resumes(metrics: Metrics) -> dict[str, float]:
    counts = {
        kind.value: metrics.registry.get_sample_value(
            "xpander_bridge_resumes_total", {"kind": kind.value}
        )
        or 0.0
        for kind in ResumeKind
    }
    return {kind: count for kind, count in counts.items() if count}


def skips(replay: ReplayFilter, frames: list[bytes]) -> list[bool]:
    return [replay.skip(f, None) for f in frames]


def test_a_replaying_server_is_skipped_up_to_the_checkpoint_then_nothing_more() -> None:
    metrics = Metrics()
    replay = ReplayFilter(resumed(up_to=4), metrics)
    assert replay.active

    assert skips(replay, HISTORY) == [True, True, True, True, False, False, False, False]
    assert not replay.active  # caught up
    assert resumes(metrics) == {"replay_skip": 1}


def test_frames_equal_to_skipped_ones_are_not_skipped_once_caught_up() -> None:
    replay = ReplayFilter(resumed(up_to=2), Metrics())
    assert skips(replay, HISTORY[:2]) == [True, True]
    # The same bytes again (a second replay) are new to the filter now: once
    # caught up it never skips, whatever comes.
    assert skips(replay, HISTORY) == [False] * len(HISTORY)


def test_a_server_that_does_not_replay_skips_nothing() -> None:
    metrics = Metrics()
    replay = ReplayFilter(resumed(up_to=4), metrics)

    # The first frame is not the task's first event: the server sends only
    # what happens from now on.
    assert skips(replay, HISTORY[4:]) == [False, False, False, False]
    assert not replay.active
    assert resumes(metrics) == {"resync": 1}


def test_the_connected_handshake_is_never_skipped() -> None:
    metrics = Metrics()
    replay = ReplayFilter(resumed(up_to=3), metrics)

    # Before the decision: the handshake does not decide anything.
    assert replay.skip(connected(1), None) is False
    assert replay.active and resumes(metrics) == {}
    # In the middle of a replay: passed on, and the replay goes on skipping.
    assert replay.skip(HISTORY[0], None) is True
    assert replay.skip(connected(2), None) is False
    assert skips(replay, HISTORY[1:5]) == [True, True, False, False]
    assert resumes(metrics) == {"replay_skip": 1}


def test_a_chunk_that_mentions_connected_is_still_skipped() -> None:
    # The handshake test looks at the type, not at the bytes alone.
    mention = orjson.dumps({"type": "chunk", "task_id": TASK, "data": '"connected"'})
    history = [HISTORY[0], mention, HISTORY[2]]
    last = event_id_for(TASK, mention, None)
    checkpoint = Checkpoint(
        task_id=TASK,
        agent_id="agent",
        organization_id="org",
        sequence=2,
        last_sse_id=None,
        last_event_id=last,
        last_stream_event_id=last,
        first_event_id=event_id_for(TASK, HISTORY[0], None),
        status="executing",
        finished=False,
        written_at=now(),
    )
    replay = ReplayFilter(TaskState.from_checkpoint(checkpoint), Metrics())
    assert skips(replay, history) == [True, True, False]


def test_a_resume_by_sse_id_needs_no_filter() -> None:
    metrics = Metrics()
    replay = ReplayFilter(resumed(up_to=4, sse_id="4"), metrics)

    assert not replay.active
    assert skips(replay, HISTORY) == [False] * len(HISTORY)
    assert resumes(metrics) == {"by_id": 1}


@pytest.mark.parametrize(
    ("first", "stream_event"),
    [(False, True), (True, False)],
    ids=["no-first-event", "no-stream-event"],
)
def test_without_a_replay_point_the_resume_is_a_resync(first: bool, stream_event: bool) -> None:
    # A checkpoint without the first event (or the last one read from the
    # stream) cannot recognise a replay: only the status check covers the gap.
    metrics = Metrics()
    replay = ReplayFilter(resumed(up_to=4, first=first, stream_event=stream_event), metrics)

    assert not replay.active
    assert skips(replay, HISTORY) == [False] * len(HISTORY)
    assert resumes(metrics) == {"resync": 1}


def test_a_task_that_was_not_resumed_skips_nothing_and_counts_nothing() -> None:
    metrics = Metrics()
    replay = ReplayFilter(TaskState(TASK, "agent", "org"), metrics)

    assert not replay.active
    assert skips(replay, HISTORY) == [False] * len(HISTORY)
    assert resumes(metrics) == {}
