"""Tasks the bridge created stream at once, on the replica that owns them.

The creating side (a ``create`` command's handler) adds ``records_for(task)``
to the records of its reply: with coordination, a ``FollowHint`` note in the
coordination topic's partition of the task, so the note commits with the
reply; without, there is one replica and it follows the task at once. The
owning side gets the notes of its partitions from the ownership group
(``__call__``), hands each to discovery as if a listing had shown the task,
and deletes it (a tombstone). See ``bridge.core.hint``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from bridge.config import CoordinationConfig
from bridge.coordination.partitioning import partition_for
from bridge.core.hint import FollowHint
from bridge.core.message import InMessage
from bridge.core.record import OutRecord, Publish
from bridge.observability.metrics import HintOutcome, Metrics

__all__ = ["FollowHints", "HintedTasks"]

log = logging.getLogger(__name__)

#: A note older than this is left to the listings (a live round lists running
#: tasks every ``discovery.interval_s``): a replica that takes a partition over
#: reads again the notes written since its last commit.
MAX_AGE_S = 60.0


class HintedTasks(Protocol):
    """Discovery, as far as the notes need it."""

    def hinted(self, item: dict[str, Any]) -> bool: ...


class FollowHints:
    def __init__(
        self,
        coordination: CoordinationConfig,
        publish: Publish,
        metrics: Metrics,
        tasks: HintedTasks | None,
    ) -> None:
        self._config = coordination
        self._publish = publish
        self._metrics = metrics
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()
        self._deletions: set[asyncio.Task[None]] = set()

    def records_for(self, task: dict[str, Any]) -> list[OutRecord]:
        """What makes the task's owner follow it now (empty: followed here already)."""
        hint = FollowHint.of(task)
        if hint is None:
            return []
        if not self._config.enabled:
            if self._tasks is not None:
                self._count(self._tasks.hinted(hint.item()))
            return []
        return [self._record(hint.task_id, hint.encode())]

    def __call__(self, message: InMessage) -> None:
        """A record of an owned coordination partition."""
        if message.value is None:
            return  # a note already acted on
        hint = FollowHint.decode(message.value)
        if hint is None:
            self._metrics.follow_hints(HintOutcome.INVALID).inc()
            return
        if hint.age_s() > MAX_AGE_S:
            self._metrics.follow_hints(HintOutcome.STALE).inc()
        elif self._tasks is not None:
            self._count(self._tasks.hinted(hint.item()))
        log.debug("follow note read", extra={"task_id": hint.task_id})
        self._delete(hint.task_id)

    def _count(self, followed: bool) -> None:
        outcome = HintOutcome.FOLLOWED if followed else HintOutcome.ALREADY
        self._metrics.follow_hints(outcome).inc()

    def _record(self, task_id: str, value: bytes | None) -> OutRecord:
        return OutRecord(
            self._config.tasks_topic,
            task_id.encode(),
            value,
            [],
            "follow_hint",
            self._loop.time(),
            partition=partition_for(task_id, self._config.partitions),
        )

    async def _write(self, records: list[OutRecord]) -> None:
        await self._publish(records)

    def _delete(self, task_id: str) -> None:
        deletion = self._loop.create_task(self._write([self._record(task_id, None)]))
        self._deletions.add(deletion)
        deletion.add_done_callback(self._deletions.discard)
