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

from bridge.core.retry import RetryPolicy
from bridge.core.task import TaskState
from bridge.envelope import EventSource
from bridge.errors import BridgeError, NotFoundError
from bridge.observability.metrics import DropReason
from bridge.sources.platform.context import WorkerContext
from bridge.sources.platform.stream import StreamOutcome

__all__ = ["TaskPoller"]

log = logging.getLogger(__name__)


class TaskPoller:
    def __init__(self, task: TaskState, context: WorkerContext) -> None:
        self.task = task
        self._ctx = context
        interval = context.poll_interval_s
        self._interval = interval
        self._retry = RetryPolicy(interval, max(interval, 60.0))
        self._loop = asyncio.get_running_loop()

    async def run(self) -> StreamOutcome:
        ctx = self._ctx
        backoff = self._retry.backoff()
        while True:
            # Spread polls so thousands of polled tasks do not fire together.
            await asyncio.sleep(self._interval * random.uniform(0.8, 1.2))
            try:
                snapshot = await ctx.client.get_task(self.task.task_id)
            except NotFoundError:
                ctx.metrics.tasks_dropped(DropReason.NOT_FOUND).inc()
                log.warning(
                    "polled task no longer exists; stop following it",
                    extra={"task_id": self.task.task_id},
                )
                return StreamOutcome.NOT_FOUND
            except BridgeError as exc:
                log.debug("poll failed", extra={"task_id": self.task.task_id, "error": str(exc)})
                await self._retry.wait(backoff, exc)
                continue
            backoff.reset()
            await self._observe(snapshot)
            if self.task.finished:
                return StreamOutcome.FINISHED

    async def _observe(self, snapshot: dict[str, Any]) -> None:
        status = snapshot.get("status")
        if not isinstance(status, str) or status == self.task.status:
            return
        records = self._ctx.transform.from_snapshot(
            self.task, snapshot, EventSource.POLL, self._loop.time()
        )
        await self._ctx.publish(records)
