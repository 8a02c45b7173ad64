"""What a replica does when the consumer group moves task partitions: the
rebalance logic, and the claims discovery reads.

On an assignment: read the checkpoints of the new partitions, tombstone the
expired ones, keep the rest for discovery (``ReplicaClaims.checkpoint``), mark
coordination ready and ask discovery to list now. On a revoke: stop the
streams of the leaving tasks, wait for their acks, write their checkpoints,
and only then let the group go on, so the next owner starts from them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from bridge.config import CoordinationConfig, KafkaConfig
from bridge.coordination.checkpointer import Checkpointer
from bridge.coordination.checkpoints import load_checkpoints
from bridge.coordination.ownership import Ownership
from bridge.coordination.partitioning import partition_for
from bridge.core.checkpoint import Checkpoint
from bridge.core.record import Publish
from bridge.core.task import TaskState
from bridge.errors import UnavailableError
from bridge.kafka.options import KAFKA_RETRY
from bridge.observability.health import Health

__all__ = ["Handover", "ReplicaClaims", "StreamOwner"]

log = logging.getLogger(__name__)


class StreamOwner(Protocol):
    """What follows the tasks (the platform source's supervisor)."""

    async def release(self, which: Callable[[str], bool]) -> list[TaskState]:
        """Stop following the tasks ``which`` selects; their states, to checkpoint."""
        ...

    def fetch_activity(self, checkpoint: Checkpoint) -> None:
        """Publish the activity thread of a task whose checkpoint says it ended
        with the thread still due (no-op for any other checkpoint)."""
        ...


class Handover:
    def __init__(
        self,
        kafka: KafkaConfig,
        config: CoordinationConfig,
        checkpointer: Checkpointer,
        publish: Publish,
        health: Health,
        *,
        streams: StreamOwner | None,
        relist: asyncio.Event,
    ) -> None:
        self._kafka = kafka
        self._config = config
        self._checkpointer = checkpointer
        self._publish = publish
        self._health = health
        self._streams = streams
        self._relist = relist
        #: checkpoints of the tasks in the owned partitions, loaded on assignment
        self._checkpoints: dict[str, Checkpoint] = {}

    def checkpoint(self, task_id: str) -> Checkpoint | None:
        return self._checkpoints.get(task_id)

    async def assigned(self, partitions: list[int]) -> None:
        loaded = await self._load(partitions)
        expired = self._checkpointer.expire(loaded.values())
        if expired:
            await self._publish(expired)
        self._checkpoints.update(loaded)
        if self._streams is not None:
            # Ended tasks whose activity thread was not yet in Kafka: now, not
            # at the next full listing (live listings never show ended tasks).
            for checkpoint in loaded.values():
                if checkpoint.finished and checkpoint.activity_due:
                    self._streams.fetch_activity(checkpoint)
        self._health.set("coordination", True)
        log.info(
            "resuming owned tasks from their checkpoints",
            extra={"partitions": len(partitions), "checkpoints": len(loaded)},
        )
        self._relist.set()

    async def _load(self, partitions: list[int]) -> dict[str, Checkpoint]:
        """The checkpoints of these partitions, however long Kafka takes: owning
        partitions whose checkpoints are unknown would restart their tasks from
        scratch, so the assignment waits (not ready meanwhile)."""
        backoff = KAFKA_RETRY.backoff()
        while True:
            try:
                return await load_checkpoints(
                    self._kafka, self._config.checkpoints_topic, partitions
                )
            except UnavailableError as exc:
                self._health.set("coordination", False, f"loading checkpoints: {exc}")
                log.warning(
                    "checkpoints could not be loaded; retrying",
                    extra={"partitions": len(partitions), "error": str(exc)},
                )
                await KAFKA_RETRY.wait(backoff)

    async def revoked(self, partitions: list[int]) -> None:
        moving = set(partitions)
        count = self._config.partitions

        def leaving(task_id: str) -> bool:
            return partition_for(task_id, count) in moving

        states = await self._streams.release(leaving) if self._streams is not None else []
        states += self._checkpointer.watched(leaving)
        await self._checkpointer.flush(states, self._config.checkpoint_interval_s * 10)
        for task_id in [t for t in self._checkpoints if leaving(t)]:
            del self._checkpoints[task_id]


class ReplicaClaims:
    """Discovery's view of coordination: the tasks of the owned partitions and
    their checkpoints. A task that ended within the checkpoint retention with
    no checkpoint was published by nobody (every publisher writes a finished
    checkpoint kept that long), so discovery catches its end up."""

    def __init__(self, ownership: Ownership, handover: Handover, retention_s: float) -> None:
        self._ownership = ownership
        self._handover = handover
        self.catch_up_window_s: float | None = retention_s

    def owns(self, task_id: str) -> bool:
        return self._ownership.owns(task_id)

    def checkpoint(self, task_id: str) -> Checkpoint | None:
        return self._handover.checkpoint(task_id)
