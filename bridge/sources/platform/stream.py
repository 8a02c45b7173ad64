"""One task's event stream, followed until its ``task_finished``.

The loop is the runner's: connect, read frames, and on any interruption
(end of body, idle timeout, network error, 5xx) count the reason, resync the
task's status, back off with full jitter (at least the server's ``retry:``),
reconnect with ``Last-Event-ID`` when the server gave ids. The resync is what
makes a terminal state impossible to miss: if the task ended while the stream
was down, a ``task_finished`` envelope with ``source: resync`` is emitted.

Back-pressure: frames are put on the bounded queue with ``await``; while the
queue is full this coroutine stops reading, the socket buffer fills, and the
server slows down. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from bridge.errors import (
    AuthError,
    BridgeError,
    NotFoundError,
    RejectedError,
    RequestTimeoutError,
    RetryableError,
)
from bridge.observability.metrics import (
    DropReason,
    Metrics,
    ReconnectReason,
    ResumeKind,
    ResyncOutcome,
)
from bridge.pipeline.backoff import Backoff
from bridge.pipeline.record import Publish
from bridge.platform.client import EventStream, PlatformClient
from bridge.platform.wire import TERMINAL_STATUSES
from bridge.sources.platform.sse import SSEDecoder, SSEEvent
from bridge.transforms.envelope import EventSource
from bridge.transforms.normalize import Normalizer, TaskState, event_id_for

__all__ = ["Publish", "StreamOutcome", "StreamSettings", "TaskStreamer"]

log = logging.getLogger(__name__)

#: after task_finished, how long the server may take to end the body before
#: the connection is closed instead of reused (see EventStream.finish)
_END_GRACE_S = 1.0


class StreamOutcome(StrEnum):
    """Why a task's streaming ended."""

    FINISHED = "finished"  #: task_finished emitted (from the stream or a resync)
    NOT_FOUND = "not_found"  #: the platform no longer knows the task
    NOT_STREAMABLE = "not_streamable"  #: the platform refused the stream: poll instead


@dataclass(frozen=True, slots=True)
class StreamSettings:
    reconnect_initial_s: float
    reconnect_max_s: float
    resync_grace_s: float


class TaskStreamer:
    """Follows one task's SSE stream; ``run()`` returns how it ended."""

    def __init__(
        self,
        task: TaskState,
        client: PlatformClient,
        normalizer: Normalizer,
        publish: Publish,
        admission: asyncio.Semaphore,
        metrics: Metrics,
        settings: StreamSettings,
        *,
        on_auth_error: Callable[[AuthError], None] | None = None,
        on_auth_ok: Callable[[], None] | None = None,
    ) -> None:
        self.task = task
        self._client = client
        self._normalizer = normalizer
        self._publish = publish
        self._admission = admission
        self._metrics = metrics
        self._settings = settings
        self._on_auth_error = on_auth_error
        self._on_auth_ok = on_auth_ok
        # A task resumed from a checkpoint: reconnect where it stopped.
        self._last_event_id: str | None = task.acked_sse_id
        self._resumed = task.sequence > 0
        # Without ids, a server may replay the stream from its start: skip what
        # the checkpoint says is already in Kafka (decided on the first frame).
        self._skipping = (
            self._resumed
            and task.acked_sse_id is None
            and task.first_event_id is not None
            and task.acked_stream_event_id is not None
        )
        self._replaying: bool | None = None
        if self._resumed:
            kind = ResumeKind.BY_ID if task.acked_sse_id is not None else ResumeKind.RESYNC
            if not self._skipping:
                metrics.resumes(kind).inc()
        self._connected = False
        self._terminal_snapshot: dict[str, Any] | None = None
        self._closed_by_check = False
        #: the last status fetch found the task running without events_streaming
        self._running_without_stream = False
        self._server_retry_ms: int | None = None
        self._loop = asyncio.get_running_loop()

    async def run(self) -> StreamOutcome:
        backoff = Backoff(self._settings.reconnect_initial_s, self._settings.reconnect_max_s)
        # A resumed task's first connection is a reconnect: its status is checked
        # beside it, so a task that ended while nobody streamed it still ends.
        reconnect = self._resumed
        while True:
            reason: ReconnectReason
            self._connected = False
            self._terminal_snapshot = None
            self._closed_by_check = False
            clean_end = False
            try:
                async with self._admission:
                    delivered_any = await self._read_stream(reconnect)
                if self.task.finished:
                    return StreamOutcome.FINISHED
                reason = ReconnectReason.ENDED
                clean_end = True
                if delivered_any:
                    backoff.reset()
            except NotFoundError:
                # An ended task's stream may be gone: the status fetch below decides.
                reason = ReconnectReason.NOT_FOUND
            except AuthError as exc:
                reason = ReconnectReason.AUTH
                if self._on_auth_error is not None:
                    self._on_auth_error(exc)
            except RejectedError as exc:
                # e.g. 400/409/422: the platform will not stream this task.
                log.info(
                    "task stream refused; polling the task instead",
                    extra={"task_id": self.task.task_id, "error": str(exc)},
                )
                return StreamOutcome.NOT_STREAMABLE
            except RequestTimeoutError:
                reason = ReconnectReason.IDLE_TIMEOUT
            except RetryableError as exc:
                reason = (
                    ReconnectReason.SERVER_ERROR
                    if (exc.status or 0) >= 500
                    else ReconnectReason.NETWORK
                )
                if exc.status == 429:
                    reason = ReconnectReason.RATE_LIMITED
            snapshot = self._terminal_snapshot
            if snapshot is not None and (clean_end or self._closed_by_check):
                # The status check after the reconnect says the task ended, and
                # the stream ended without its task_finished (or kept silent
                # about it past the grace period). A stream that broke off
                # instead gets another reconnect: with ids it replays the rest.
                await self._emit_resync(snapshot)
                return StreamOutcome.FINISHED
            self._metrics.stream_reconnects(reason).inc()
            if not self._connected:
                # No stream to learn from: ask the task itself.
                outcome = await self._resync()
                if outcome is not None:
                    return outcome
                if reason is ReconnectReason.NOT_FOUND and self._running_without_stream:
                    # The task exists and runs, but has no event stream.
                    return StreamOutcome.NOT_STREAMABLE
            reconnect = True
            hint = self._server_retry_ms / 1000 if self._server_retry_ms is not None else None
            await asyncio.sleep(backoff.next_delay(hint))

    async def _read_stream(self, reconnect: bool) -> bool:
        """One connection; returns whether any event was read. Raises on failure.

        On a reconnect the task's status is fetched beside the stream: if the
        task has ended, the stream gets ``resync_grace_s`` to deliver the
        ``task_finished`` (a server that replays after ``Last-Event-ID`` does);
        otherwise the stream is closed and ``run`` emits it from the snapshot.
        """
        task = self.task
        loop = self._loop
        decoder = SSEDecoder(last_event_id=self._last_event_id)
        got_any = False
        async with self._client.task_events(task.task_id, self._last_event_id) as stream:
            self._connected = True
            if self._on_auth_ok is not None:
                self._on_auth_ok()
            # After a reconnect, fetch the task's status beside the stream.
            fetch = loop.create_task(self._fetch_status()) if reconnect else None
            closer = loop.create_task(self._close_if_ended(fetch, stream)) if fetch else None
            self._metrics.active_streams.inc()
            try:
                async for chunk in stream.chunks():
                    events = decoder.feed(chunk)
                    # While a stream waits for its next bytes, this frame must
                    # not pin what it read last: at 10,000 quiet streams, each
                    # holding its last chunk and envelope cost 150 MB.
                    del chunk
                    if not events:
                        continue
                    progress = await self._publish_frames(events)
                    del events
                    got_any = got_any or progress
                    if task.finished:
                        await stream.finish(_END_GRACE_S)
                        return True
            finally:
                self._metrics.active_streams.dec()
                if closer is not None:
                    closer.cancel()
                if fetch is not None:
                    await self._settle_fetch(fetch)
                # Kept across reconnects: resume where the server's ids left off.
                self._last_event_id = decoder.last_event_id
                self._server_retry_ms = decoder.retry
        return got_any

    async def _publish_frames(self, events: list[SSEEvent]) -> bool:
        """Normalize and publish one chunk's events; returns whether any was
        progress (a handshake is not: it must not reset the back-off). Stops at
        the task's end."""
        task = self.task
        received_at = self._loop.time()
        progress = False
        for event in events:
            if not event.data:
                continue  # a keep-alive form; the official client skips it too
            sse_id = event.id if event.own_id else None
            if self._skipping and self._replayed(event.data, sse_id):
                continue
            records = self._normalizer.from_frame(task, event.data, sse_id, received_at)
            if records:
                await self._publish(records)
                progress = progress or records[0].event_type != "connected"
            if task.finished:
                break
        return progress

    def _replayed(self, frame: bytes, sse_id: str | None) -> bool:
        """While resuming without ids: is this frame one already in Kafka?

        The first frame decides: if it is the task's first event, the server
        replays from the start, and frames are skipped up to and including the
        last one the checkpoint covers; otherwise it does not replay, and
        nothing is skipped (the status check covers what was missed).
        """
        task = self.task
        if b'"connected"' in frame and _event_type(frame) == "connected":
            return False  # per-connection handshake, never part of a replay
        event_id = event_id_for(task.task_id, frame, sse_id)
        if self._replaying is None:
            self._replaying = event_id == task.first_event_id
            self._metrics.resumes(
                ResumeKind.REPLAY_SKIP if self._replaying else ResumeKind.RESYNC
            ).inc()
            if not self._replaying:
                self._skipping = False
                return False
        if event_id == task.acked_stream_event_id:
            self._skipping = False  # caught up: the next frame is new
        return True

    async def _fetch_status(self) -> dict[str, Any] | None:
        try:
            return await self._client.get_task(self.task.task_id)
        except BridgeError as exc:
            log.debug(
                "status check failed", extra={"task_id": self.task.task_id, "error": str(exc)}
            )
            return None

    async def _close_if_ended(
        self, fetch: asyncio.Task[dict[str, Any] | None], stream: EventStream
    ) -> None:
        # Shielded: cancelling this closer must not cancel the fetch it waits on.
        snapshot = await asyncio.shield(fetch)
        if snapshot is None or snapshot.get("status") not in TERMINAL_STATUSES:
            return
        await asyncio.sleep(self._settings.resync_grace_s)
        if not self.task.finished:
            self._closed_by_check = True
            stream.close()  # ends the read loop; run() emits the end

    async def _settle_fetch(self, fetch: asyncio.Task[dict[str, Any] | None]) -> None:
        """The stream is over: learn what the status check found (waiting for it if
        it is still running, since the stream can no longer deliver the end)."""
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            fetch.cancel()  # shutting down: nothing to learn
            return
        snapshot = await asyncio.shield(fetch)
        if snapshot is None:
            return
        if snapshot.get("status") in TERMINAL_STATUSES:
            if not self.task.finished:
                self._terminal_snapshot = snapshot
        else:
            self._metrics.resyncs(ResyncOutcome.RUNNING).inc()

    async def _resync(self) -> StreamOutcome | None:
        """After an interruption: if the task ended meanwhile, emit its end."""
        self._running_without_stream = False
        try:
            snapshot = await self._client.get_task(self.task.task_id)
        except NotFoundError:
            self._drop(DropReason.NOT_FOUND)
            return StreamOutcome.NOT_FOUND
        except BridgeError as exc:
            self._metrics.resyncs(ResyncOutcome.FAILED).inc()
            log.debug("resync failed", extra={"task_id": self.task.task_id, "error": str(exc)})
            return None
        if snapshot.get("status") in TERMINAL_STATUSES and not self.task.finished:
            await self._emit_resync(snapshot)
            return StreamOutcome.FINISHED
        self._running_without_stream = snapshot.get("events_streaming") is not True
        self._metrics.resyncs(ResyncOutcome.RUNNING).inc()
        return None

    async def _emit_resync(self, snapshot: dict[str, Any]) -> None:
        status = snapshot.get("status")
        self._metrics.resyncs(ResyncOutcome.TERMINAL).inc()
        log.info(
            "task ended without its task_finished on the stream; emitting it from resync",
            extra={"task_id": self.task.task_id, "status": status},
        )
        records = self._normalizer.emit(
            self.task,
            "task_finished",
            snapshot,
            source=EventSource.RESYNC,
            occurred_at=_finished_at(snapshot),
            received_at=self._loop.time(),
            id_material=f"resync\x00{status}\x00{snapshot.get('finished_at')}".encode(),
        )
        await self._publish(records)

    def _drop(self, reason: DropReason) -> None:
        self._metrics.tasks_dropped(reason).inc()
        log.warning(
            "task no longer exists on the platform; stop following it",
            extra={"task_id": self.task.task_id, "reason": reason},
        )


def _event_type(frame: bytes) -> str | None:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


def _finished_at(snapshot: dict[str, Any]) -> str | None:
    value = snapshot.get("finished_at")
    return value if isinstance(value, str) else None
