"""The status check beside a stream: what makes a terminal state impossible to
miss.

After a reconnect, and when a stream has delivered nothing but keep-alives
for ``streams.quiet_check_s``, the task's status is fetched while the stream
is read. If
the task has ended, the stream gets ``resync_grace_s`` to deliver the
``task_finished`` itself (a server that replays after ``Last-Event-ID``
does), counted from the last sign of life the reader reports (``activity``:
a frame read, skipped replay frames included, or a publish still waiting for
room in the queue). A replay still flowing is read to its end however long
it takes (a slow host, a full queue), since closing it would lose the events
not read yet. Only a stream silent for the grace while its reader is idle is
closed, and the streamer emits the end from the snapshot (``source: resync``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bridge.core.task import TaskState
from bridge.errors import BridgeError
from bridge.observability.metrics import Metrics, ResyncOutcome
from bridge.platform.client import EventStream, PlatformClient
from bridge.wire import TERMINAL_STATUSES

__all__ = ["StatusCheck"]

log = logging.getLogger(__name__)


class StatusCheck:
    """Started when a reconnected stream opens; ``settle()`` when it ends."""

    def __init__(
        self,
        task: TaskState,
        client: PlatformClient,
        metrics: Metrics,
        stream: EventStream,
        grace_s: float,
        activity: Callable[[], int | None],
    ) -> None:
        """``activity()``: a count that moves with every frame the reader takes
        off the stream, ``None`` while the reader is busy with what it read."""
        self._task = task
        self._activity = activity
        self._client = client
        self._metrics = metrics
        self._grace_s = grace_s
        #: the check found the task ended and closed the stream
        self.closed_stream = False
        loop = asyncio.get_running_loop()
        self._fetch = loop.create_task(self._fetch_status())
        self._closer = loop.create_task(self._close_if_ended(stream))

    @property
    def done(self) -> bool:
        """The fetch answered and, if the task ended, the stream was closed."""
        return self._fetch.done() and self._closer.done()

    async def settle(self) -> dict[str, Any] | None:
        """The stream is over: the terminal snapshot the check found, if the
        stream did not deliver the end itself (waits for a fetch still running,
        since the stream can no longer deliver it)."""
        self._closer.cancel()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            self._fetch.cancel()  # shutting down: nothing to learn
            return None
        snapshot = await asyncio.shield(self._fetch)
        if snapshot is None:
            return None
        if snapshot.get("status") in TERMINAL_STATUSES:
            return None if self._task.finished else snapshot
        self._metrics.resyncs(ResyncOutcome.RUNNING).inc()
        return None

    async def _fetch_status(self) -> dict[str, Any] | None:
        try:
            return await self._client.get_task(self._task.task_id)
        except BridgeError as exc:
            log.debug(
                "status check failed", extra={"task_id": self._task.task_id, "error": str(exc)}
            )
            return None

    async def _close_if_ended(self, stream: EventStream) -> None:
        # Shielded: cancelling this closer must not cancel the fetch it waits on.
        snapshot = await asyncio.shield(self._fetch)
        if snapshot is None or snapshot.get("status") not in TERMINAL_STATUSES:
            return
        task = self._task
        while True:
            before = self._activity()
            await asyncio.sleep(self._grace_s)
            if task.finished:
                return
            now = self._activity()
            if now is not None and now == before:
                # Nothing read and nothing being handled for the grace: the
                # stream will not deliver the end.
                self.closed_stream = True
                stream.close()  # ends the read loop; the streamer emits the end
                return
