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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import httpx

from bridge.errors import (
    AuthError,
    BridgeError,
    NotFoundError,
    RejectedError,
    RequestTimeoutError,
    RetryableError,
    StreamInterrupted,
)
from bridge.observability.metrics import Metrics
from bridge.pipeline.backoff import Backoff
from bridge.pipeline.record import OutRecord
from bridge.platform.client import PlatformClient
from bridge.platform.wire import TERMINAL_STATUSES
from bridge.sources.platform.sse import SSEDecoder
from bridge.transforms.envelope import EventSource
from bridge.transforms.normalize import Normalizer, TaskState

__all__ = ["Publish", "StreamOutcome", "StreamSettings", "TaskStreamer"]

log = logging.getLogger(__name__)

Publish = Callable[[list[OutRecord]], Awaitable[None]]


class StreamOutcome(StrEnum):
    """Why a task's streaming ended."""

    FINISHED = "finished"  #: task_finished emitted (from the stream or a resync)
    NOT_FOUND = "not_found"  #: the platform no longer knows the task
    NOT_STREAMABLE = "not_streamable"  #: the platform refused the stream: poll instead


@dataclass(frozen=True, slots=True)
class StreamSettings:
    reconnect_initial_s: float
    reconnect_max_s: float


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
        self._last_event_id: str | None = None
        self._server_retry_ms: int | None = None
        self._loop = asyncio.get_running_loop()

    async def run(self) -> StreamOutcome:
        backoff = Backoff(self._settings.reconnect_initial_s, self._settings.reconnect_max_s)
        while True:
            reason: str
            try:
                async with self._admission:
                    delivered_any = await self._read_stream()
                if self.task.finished:
                    return StreamOutcome.FINISHED
                reason = "ended"
                if delivered_any:
                    backoff.reset()
            except NotFoundError:
                self._drop("not_found")
                return StreamOutcome.NOT_FOUND
            except AuthError as exc:
                reason = "auth"
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
                reason = "idle_timeout"
            except RetryableError as exc:
                reason = "server_error" if (exc.status or 0) >= 500 else "network"
                if exc.status == 429:
                    reason = "rate_limited"
            self._metrics.stream_reconnects.labels(reason).inc()

            outcome = await self._resync()
            if outcome is not None:
                return outcome
            hint = self._server_retry_ms / 1000 if self._server_retry_ms is not None else None
            await asyncio.sleep(backoff.next_delay(hint))

    async def _read_stream(self) -> bool:
        """One connection; returns whether any event was read. Raises on failure."""
        task = self.task
        loop = self._loop
        normalizer = self._normalizer
        publish = self._publish
        decoder = SSEDecoder(last_event_id=self._last_event_id)
        got_any = False
        async with self._client.task_events(task.task_id, self._last_event_id) as response:
            if self._on_auth_ok is not None:
                self._on_auth_ok()
            self._metrics.active_streams.inc()
            try:
                async for chunk in response.aiter_raw():
                    events = decoder.feed(chunk)
                    if not events:
                        continue
                    received_at = loop.time()
                    for event in events:
                        if not event.data:
                            continue  # a keep-alive form; the official client skips it too
                        records = normalizer.from_frame(task, event.data, event.id, received_at)
                        if records:
                            await publish(records)
                        got_any = True
                        if task.finished:
                            return True
            except httpx.ReadTimeout as exc:
                raise RequestTimeoutError("no bytes on the stream within the idle timeout") from exc
            except httpx.TransportError as exc:
                raise _interrupted(exc) from exc
            finally:
                self._metrics.active_streams.dec()
                # Kept across reconnects: resume where the server's ids left off.
                self._last_event_id = decoder.last_event_id
                self._server_retry_ms = decoder.retry
        return got_any

    async def _resync(self) -> StreamOutcome | None:
        """After an interruption: if the task ended meanwhile, emit its end."""
        try:
            snapshot = await self._client.get_task(self.task.task_id)
        except NotFoundError:
            self._drop("not_found")
            return StreamOutcome.NOT_FOUND
        except BridgeError as exc:
            self._metrics.resyncs.labels("failed").inc()
            log.debug("resync failed", extra={"task_id": self.task.task_id, "error": str(exc)})
            return None
        status = snapshot.get("status")
        if status in TERMINAL_STATUSES and not self.task.finished:
            self._metrics.resyncs.labels("terminal").inc()
            log.info(
                "task ended while its stream was down; emitting task_finished from resync",
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
            return StreamOutcome.FINISHED
        self._metrics.resyncs.labels("running").inc()
        return None

    def _drop(self, reason: str) -> None:
        self._metrics.tasks_dropped.labels(reason).inc()
        log.warning(
            "task no longer exists on the platform; stop following it",
            extra={"task_id": self.task.task_id, "reason": reason},
        )


def _finished_at(snapshot: dict[str, object]) -> str | None:
    value = snapshot.get("finished_at")
    return value if isinstance(value, str) else None


def _interrupted(exc: httpx.TransportError) -> RetryableError:
    return StreamInterrupted(f"stream interrupted: {type(exc).__name__}")
