"""A task without an event stream, followed by polling its status.

Every status change is published as a ``task_updated`` envelope with ``source:
poll`` (the first poll included, so consumers learn the task exists); the
terminal one as ``task_finished``, which ends the poller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from bridge.errors import AuthError, BridgeError, NotFoundError
from bridge.observability.metrics import DropReason, Metrics
from bridge.pipeline.backoff import Backoff
from bridge.platform.client import PlatformClient
from bridge.platform.wire import TERMINAL_STATUSES
from bridge.sources.platform.stream import Publish, StreamOutcome
from bridge.transforms.envelope import EventSource
from bridge.transforms.normalize import Normalizer, TaskState

__all__ = ["TaskPoller"]

log = logging.getLogger(__name__)


class TaskPoller:
    def __init__(
        self,
        task: TaskState,
        client: PlatformClient,
        normalizer: Normalizer,
        publish: Publish,
        metrics: Metrics,
        *,
        interval_s: float,
        first_snapshot: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self._client = client
        self._normalizer = normalizer
        self._publish = publish
        self._metrics = metrics
        self._interval = interval_s
        self._first = first_snapshot
        self._loop = asyncio.get_running_loop()

    async def run(self) -> StreamOutcome:
        backoff = Backoff(self._interval, max(self._interval, 60.0))
        snapshot = self._first
        while True:
            if snapshot is not None:
                await self._observe(snapshot)
                if self.task.finished:
                    return StreamOutcome.FINISHED
            # Spread polls so thousands of polled tasks do not fire together.
            await asyncio.sleep(self._interval * random.uniform(0.8, 1.2))
            try:
                snapshot = await self._client.get_task(self.task.task_id)
                backoff.reset()
            except NotFoundError:
                self._metrics.tasks_dropped(DropReason.NOT_FOUND).inc()
                log.warning(
                    "polled task no longer exists; stop following it",
                    extra={"task_id": self.task.task_id},
                )
                return StreamOutcome.NOT_FOUND
            except (AuthError, BridgeError) as exc:
                snapshot = None
                log.debug("poll failed", extra={"task_id": self.task.task_id, "error": str(exc)})
                await asyncio.sleep(backoff.next_delay(getattr(exc, "retry_after", None)))

    async def _observe(self, snapshot: dict[str, Any]) -> None:
        status = snapshot.get("status")
        if not isinstance(status, str) or status == self.task.status:
            return
        terminal = status in TERMINAL_STATUSES
        records = self._normalizer.emit(
            self.task,
            "task_finished" if terminal else "task_updated",
            snapshot,
            source=EventSource.POLL,
            occurred_at=None,
            received_at=self._loop.time(),
            id_material=f"poll\x00{status}\x00{snapshot.get('updated_at')}".encode(),
        )
        await self._publish(records)
