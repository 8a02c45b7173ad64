"""What every task worker (stream or poller) is given, once, by the wiring:
the platform client, the transform, the queue's ``publish``, the metrics, the
readiness hooks and the settings. One object instead of nine constructor
parameters threaded through discovery, the supervisor and each worker.

The transform and the readiness hooks are *ports*: protocols this source
declares for what it needs, which ``bridge.app`` fills with the real
``Normalizer`` and ``Health``. A source never imports a transform or a sink.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.core.checkpoint import Checkpoint
from bridge.core.record import OutRecord, Publish
from bridge.core.retry import RetryPolicy
from bridge.core.task import TaskState
from bridge.envelope import EventSource
from bridge.errors import AuthError
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient
from bridge.sources.platform.pacer import FetchPacer

__all__ = ["AllTasks", "Claims", "EventTransform", "PlatformHealth", "WorkerContext"]


class EventTransform(Protocol):
    """Turns what a worker read into envelope records (``Normalizer``)."""

    def from_frame(
        self, task: TaskState, frame: bytes, sse_id: str | None, received_at: float
    ) -> list[OutRecord]:
        """One SSE ``data`` payload (none when filtered; a DLQ record when bad)."""
        ...

    def from_oversized_frame(
        self, task: TaskState, head: bytes, size: int, sse_id: str | None, received_at: float
    ) -> list[OutRecord]:
        """An SSE event over ``streams.max_frame_bytes``: its dead-letter record."""
        ...

    def from_snapshot(
        self, task: TaskState, snapshot: dict[str, Any], source: EventSource, received_at: float
    ) -> list[OutRecord]:
        """A task status snapshot: ``task_finished`` when terminal, else ``task_updated``."""
        ...

    def from_activity(self, task: TaskState, thread: bytes, received_at: float) -> list[OutRecord]:
        """An ended task's activity thread (the platform's bytes): its record or
        ordered parts; once written, ``task.activity_due`` is cleared."""
        ...

    def from_activity_rejected(
        self, task: TaskState, error: str, status: int | None, received_at: float
    ) -> list[OutRecord]:
        """The platform refused the thread for good: its dead-letter record
        (settles ``task.activity_due`` the same way)."""
        ...


class PlatformHealth(Protocol):
    """Readiness of the platform side, as workers and discovery observe it."""

    def reachable(self) -> None:
        """A request was answered: the API key works."""
        ...

    def refused(self, error: AuthError) -> None:
        """401/403: the API key is refused."""
        ...

    def listings(self, ok: bool, detail: str) -> None:
        """How discovery's listings go: ``ok`` unless every one fails; ``detail``
        names those that fail and what the platform answered."""
        ...


class Claims(Protocol):
    """Which tasks this replica follows, and where each one stopped
    (``bridge.coordination`` fills it; a single replica claims everything)."""

    #: a task that ended within this window with no checkpoint was published
    #: by nobody (``None``: no checkpoints are kept, so no catch-up)
    catch_up_window_s: float | None

    def owns(self, task_id: str) -> bool: ...

    def checkpoint(self, task_id: str) -> Checkpoint | None: ...


class AllTasks:
    """The claims of a bridge without coordination: every task, no checkpoints."""

    catch_up_window_s: float | None = None

    def owns(self, task_id: str) -> bool:
        return True

    def checkpoint(self, task_id: str) -> Checkpoint | None:
        return None


@dataclass(frozen=True, slots=True)
class WorkerContext:
    client: PlatformClient
    transform: EventTransform
    publish: Publish
    metrics: Metrics
    health: PlatformHealth
    #: reconnect back-off of the streams (at least the server's ``retry:``)
    reconnect: RetryPolicy
    #: after a reconnect to an ended task, how long the stream may take to
    #: deliver its ``task_finished`` before it is emitted from the status
    resync_grace_s: float
    #: a stream with no event (keep-alives aside) for this long gets a status check
    quiet_check_s: float
    #: seconds between status polls of a task without a stream
    poll_interval_s: float
    #: FIFO admission of open streams (``streams.max_concurrent`` slots)
    admission: asyncio.Semaphore
    #: the largest SSE event read; a larger one is skipped and dead-lettered
    max_frame_bytes: int
    #: the turns of activity-log fetches (``bridge.sources.platform.pacer.FetchPacer``)
    activity_pacer: FetchPacer
