"""Resuming a task from its checkpoint: what the stream may skip.

With server ids the stream resumes by ``Last-Event-ID`` and nothing needs
skipping. Without, a server may replay the stream from its start: the first
frame decides. If it is the task's first event (its ``event_id`` is the
checkpoint's ``first_event_id``), frames are skipped up to and including the
last one the checkpoint covers; otherwise the server does not replay, nothing
is skipped, and the status check covers what was missed.
"""

from __future__ import annotations

import orjson

from bridge.core.identity import event_id_for
from bridge.core.task import TaskState
from bridge.observability.metrics import Metrics, ResumeKind

__all__ = ["ReplayFilter"]


class ReplayFilter:
    """One per streamed task; ``skip(frame, sse_id)`` for each frame read."""

    __slots__ = ("_metrics", "_replaying", "_task", "active")

    def __init__(self, task: TaskState, metrics: Metrics) -> None:
        self._task = task
        self._metrics = metrics
        self._replaying: bool | None = None
        #: still deciding, or still skipping a replay
        self.active = (
            task.resumed
            and task.acked_sse_id is None
            and task.first_event_id is not None
            and task.acked_stream_event_id is not None
        )
        if task.resumed and not self.active:
            kind = ResumeKind.BY_ID if task.acked_sse_id is not None else ResumeKind.RESYNC
            metrics.resumes(kind).inc()

    def skip(self, frame: bytes, sse_id: str | None) -> bool:
        """Is this frame one already in Kafka?"""
        if not self.active:
            return False
        if b'"connected"' in frame and _event_type(frame) == "connected":
            return False  # per-connection handshake, never part of a replay
        task = self._task
        event_id = event_id_for(task.task_id, frame, sse_id)
        if self._replaying is None:
            self._replaying = event_id == task.first_event_id
            kind = ResumeKind.REPLAY_SKIP if self._replaying else ResumeKind.RESYNC
            self._metrics.resumes(kind).inc()
            if not self._replaying:
                self.active = False
                return False
        if event_id == task.acked_stream_event_id:
            self.active = False  # caught up: the next frame is new
        return True


def _event_type(frame: bytes) -> str | None:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None
