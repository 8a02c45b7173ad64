"""One task's event stream, followed until its ``task_finished``.

The loop is the runner's: connect, read frames, and on any interruption
(end of body, idle timeout, network error, 5xx) count the reason, learn the
task's status, back off with full jitter (at least the server's ``retry:``),
reconnect with ``Last-Event-ID`` when the server gave ids. After a reconnect
a ``StatusCheck`` runs beside the stream, and after a failed connect the
status is fetched at once: if the task ended while the stream was down, a
``task_finished`` envelope with ``source: resync`` is emitted. A task resumed
from a checkpoint skips what a replaying server sends again (``ReplayFilter``).

Back-pressure: frames are put on the bounded queue with ``await``; while the
queue is full this coroutine stops reading, the socket buffer fills, and the
server slows down. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bridge.core.task import TaskState
from bridge.envelope import EventSource
from bridge.errors import (
    AuthError,
    BridgeError,
    NotFoundError,
    RejectedError,
    RequestTimeoutError,
)
from bridge.observability.metrics import DropReason, ReconnectReason, ResyncOutcome
from bridge.platform.client import EventStream
from bridge.sources.platform.context import WorkerContext
from bridge.sources.platform.replay import ReplayFilter
from bridge.sources.platform.sse import SSEDecoder, SSEEvent
from bridge.sources.platform.status_check import StatusCheck
from bridge.wire import TERMINAL_STATUSES

__all__ = ["StreamOutcome", "TaskStreamer"]

log = logging.getLogger(__name__)

#: the Last-Event-ID that asks a server for a stream from its first event
FROM_START = "0"
#: after task_finished, how long the server may take to end the body before
#: the connection is closed instead of reused (see EventStream.finish)
_END_GRACE_S = 1.0


class StreamOutcome(StrEnum):
    """Why a task's streaming ended."""

    FINISHED = "finished"  #: task_finished emitted (from the stream or a resync)
    NOT_FOUND = "not_found"  #: the platform no longer knows the task
    NOT_STREAMABLE = "not_streamable"  #: the platform refused the stream: poll instead


@dataclass(slots=True)
class _Attempt:
    """What one connection attempt learned."""

    connected: bool = False
    #: an event (not a handshake) was read: the back-off starts over
    progress: bool = False
    #: the body ended without an error
    clean_end: bool = False
    #: the status check found the task ended without the stream saying so
    terminal_snapshot: dict[str, Any] | None = None
    #: ...and closed the stream after the grace period
    closed_by_check: bool = False


def reconnect_reason(error: BridgeError) -> ReconnectReason | None:  # noqa: PLR0911  (one return per error class reads as a table)
    """Why the stream is reopened after ``error``; ``None``: the platform
    refuses to stream this task at all (poll it instead)."""
    if isinstance(error, NotFoundError):
        return ReconnectReason.NOT_FOUND  # an ended task's stream may be gone
    if isinstance(error, AuthError):
        return ReconnectReason.AUTH
    if isinstance(error, RejectedError):
        return None  # e.g. 400/409/422
    if isinstance(error, RequestTimeoutError):
        return ReconnectReason.IDLE_TIMEOUT
    if error.status == 429:
        return ReconnectReason.RATE_LIMITED
    if (error.status or 0) >= 500:
        return ReconnectReason.SERVER_ERROR
    return ReconnectReason.NETWORK


class TaskStreamer:
    """Follows one task's SSE stream; ``run()`` returns how it ended."""

    def __init__(self, task: TaskState, context: WorkerContext, *, ended: bool = False) -> None:
        """``ended``: a listing says the task has ended (its stream is read for
        what nobody published, beside a status check from the first connection)."""
        self.task = task
        self._ctx = context
        self._ended = ended
        # A task resumed from a checkpoint: reconnect where it stopped.
        self._last_event_id: str | None = task.acked_sse_id
        # A task followed with no checkpoint asks for its stream from the start
        # (``Last-Event-ID: 0``) until it has read an event: if another replica
        # read it before dying, or the bridge was down when it started, a server
        # that keeps history sends what nobody published yet, numbered in the
        # same order (same event_id and sequence as any copy already in Kafka).
        # Until an event is read, not just for the first attempt: a first
        # connection that fails (a busy host, a 503) must not lose the start.
        # A server without ids ignores it.
        self._server_retry_ms: int | None = None
        self._replay = ReplayFilter(task, context.metrics)
        self._loop = asyncio.get_running_loop()
        #: what the status check watches (``_activity``): frames read, and
        #: whether a chunk's frames are being handled now
        self._frames_read = 0
        self._handling = False

    async def run(self) -> StreamOutcome:
        ctx = self._ctx
        backoff = ctx.reconnect.backoff()
        # A resumed task's first connection is a reconnect: its status is checked
        # beside it, so a task that ended while nobody streamed it still ends.
        # So is an ended task's: its server may have nothing to send.
        reconnect = self.task.resumed or self._ended
        while True:
            attempt = _Attempt()
            reason: ReconnectReason | None
            try:
                async with ctx.admission:
                    await self._read_stream(attempt, reconnect)
                if self.task.finished:
                    return StreamOutcome.FINISHED
                reason = ReconnectReason.ENDED
                attempt.clean_end = True
            except BridgeError as exc:
                reason = reconnect_reason(exc)
                if reason is None:
                    log.info(
                        "task stream refused; polling the task instead",
                        extra={"task_id": self.task.task_id, "error": str(exc)},
                    )
                    return StreamOutcome.NOT_STREAMABLE
                if isinstance(exc, AuthError):
                    ctx.health.refused(exc)
            if attempt.progress:
                backoff.reset()  # it read events: a new outage starts the curve over
            snapshot = attempt.terminal_snapshot
            if snapshot is not None and (attempt.clean_end or attempt.closed_by_check):
                # The status check says the task ended, and the stream ended
                # without its task_finished (or kept silent about it past the
                # grace period). A stream that broke off instead gets another
                # reconnect: with ids it replays the rest.
                await self._emit_resync(snapshot)
                return StreamOutcome.FINISHED
            ctx.metrics.stream_reconnects(reason).inc()
            if not attempt.connected:
                # No stream to learn from: ask the task itself.
                outcome = await self._resync(reason)
                if outcome is not None:
                    return outcome
            reconnect = True
            hint = self._server_retry_ms / 1000 if self._server_retry_ms is not None else None
            await asyncio.sleep(backoff.next_delay(hint))

    async def _read_stream(self, attempt: _Attempt, reconnect: bool) -> None:
        """One connection, read until it ends. Raises on failure."""
        ctx = self._ctx
        task = self.task
        decoder = SSEDecoder(self._last_event_id, max_frame_bytes=ctx.max_frame_bytes)
        asked = self._last_event_id
        if asked is None and task.sequence == 0 and task.first_event_id is None:
            asked = FROM_START
        async with ctx.client.task_events(task.task_id, asked) as stream:
            attempt.connected = True
            ctx.health.reachable()
            check = self._check(stream) if reconnect else None
            ctx.metrics.active_streams.inc()
            last_event = self._loop.time()
            try:
                async for chunk in stream.chunks():
                    events = decoder.feed(chunk)
                    # While a stream waits for its next bytes, this frame must
                    # not pin what it read last: at 10,000 quiet streams, each
                    # holding its last chunk and envelope cost 150 MB.
                    del chunk
                    now = self._loop.time()
                    self._frames_read += len(events)
                    if not events:
                        # Keep-alives only: after a while, ask whether the task
                        # still runs (a server may linger after the end).
                        if now - last_event > ctx.quiet_check_s and (check is None or check.done):
                            if check is not None:
                                await check.settle()
                            check = self._check(stream)
                            last_event = now
                        continue
                    last_event = now
                    self._handling = True
                    try:
                        progress = await self._publish_frames(events)
                    finally:
                        self._handling = False
                    del events
                    attempt.progress = attempt.progress or progress
                    if task.finished:
                        await stream.finish(_END_GRACE_S)
                        return
            finally:
                ctx.metrics.active_streams.dec()
                if check is not None:
                    attempt.terminal_snapshot = await check.settle()
                    attempt.closed_by_check = check.closed_stream
                # Kept across reconnects: resume where the server's ids left off.
                self._last_event_id = decoder.last_event_id
                self._server_retry_ms = decoder.retry

    def _check(self, stream: EventStream) -> StatusCheck:
        ctx = self._ctx
        return StatusCheck(
            self.task, ctx.client, ctx.metrics, stream, ctx.resync_grace_s, self._activity
        )

    def _activity(self) -> int | None:
        """The status check's sign of life: frames read, ``None`` while a chunk's
        frames are being handled (a publish may wait on a full queue)."""
        return None if self._handling else self._frames_read

    async def _publish_frames(self, events: list[SSEEvent]) -> bool:
        """Normalize and publish one chunk's events; returns whether any was
        progress (a handshake is not: it must not reset the back-off). Stops at
        the task's end."""
        task = self.task
        transform = self._ctx.transform
        publish = self._ctx.publish
        replay = self._replay
        received_at = self._loop.time()
        progress = False
        for event in events:
            sse_id = event.id if event.own_id else None
            if event.oversized:
                await publish(
                    transform.from_oversized_frame(
                        task, event.data, event.oversized, sse_id, received_at
                    )
                )
                continue
            if not event.data:
                continue  # a keep-alive form; the official client skips it too
            if replay.active and replay.skip(event.data, sse_id):
                continue
            records = transform.from_frame(task, event.data, sse_id, received_at)
            if records:
                await publish(records)
                progress = progress or records[0].event_type != "connected"
            if task.finished:
                break
        return progress

    async def _resync(self, reason: ReconnectReason) -> StreamOutcome | None:
        """After a failed connect: if the task ended meanwhile, emit its end."""
        ctx = self._ctx
        try:
            snapshot = await ctx.client.get_task(self.task.task_id)
        except NotFoundError:
            ctx.metrics.tasks_dropped(DropReason.NOT_FOUND).inc()
            log.warning(
                "task no longer exists on the platform; stop following it",
                extra={"task_id": self.task.task_id, "reason": "not_found"},
            )
            return StreamOutcome.NOT_FOUND
        except BridgeError as exc:
            ctx.metrics.resyncs(ResyncOutcome.FAILED).inc()
            log.debug("resync failed", extra={"task_id": self.task.task_id, "error": str(exc)})
            return None
        if snapshot.get("status") in TERMINAL_STATUSES and not self.task.finished:
            await self._emit_resync(snapshot)
            return StreamOutcome.FINISHED
        ctx.metrics.resyncs(ResyncOutcome.RUNNING).inc()
        if reason is ReconnectReason.NOT_FOUND and snapshot.get("events_streaming") is not True:
            # The task exists and runs, but has no event stream.
            return StreamOutcome.NOT_STREAMABLE
        return None

    async def _emit_resync(self, snapshot: dict[str, Any]) -> None:
        ctx = self._ctx
        ctx.metrics.resyncs(ResyncOutcome.TERMINAL).inc()
        log.info(
            "task ended without its task_finished on the stream; emitting it from resync",
            extra={"task_id": self.task.task_id, "status": snapshot.get("status")},
        )
        records = ctx.transform.from_snapshot(
            self.task, snapshot, EventSource.RESYNC, self._loop.time()
        )
        await ctx.publish(records)
