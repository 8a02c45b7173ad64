"""Writes each followed task's checkpoint as its acknowledged run grows.

A task's checkpoint is due when ``acks.done`` passed the last written one; the
writer batches these every ``coordination.checkpoint_interval_s``, and writes
at once (and waits for the broker) when a task's ownership moves or the
bridge stops. A task's first and final checkpoints are written at once, alone:
waking for one must not also write every other due one. A round is handed
over in slices, so the events read meanwhile are queued between them rather
than behind thousands of checkpoints (the delivery loop takes the queue in
order). A finished task's checkpoint is tombstoned after
``coordination.checkpoint_retention_s``. ``checkpoint_lag`` counts the
envelopes acknowledged but not yet covered by a written checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable

from bridge.config import CoordinationConfig
from bridge.coordination.partitioning import partition_for
from bridge.core.checkpoint import Checkpoint, now
from bridge.core.record import OutRecord, Publish, completion
from bridge.core.task import TaskState
from bridge.observability.metrics import Metrics

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

#: checkpoints handed to the queue at a time (see the module doc)
_SLICE = 128


class Checkpointer:
    def __init__(
        self,
        config: CoordinationConfig,
        publish: Publish,
        metrics: Metrics,
        *,
        transactional: bool = False,
    ) -> None:
        self._config = config
        #: envelopes and checkpoints share transactions: ``covering`` gives each
        #: transaction the checkpoints of its envelopes (nothing is urgent then)
        self._transactional = transactional
        #: tasks with envelopes in the open transaction
        self._covered: dict[str, TaskState] = {}
        self._publish = publish
        self._metrics = metrics
        self._tasks: dict[str, TaskState] = {}
        #: tasks with progress since their last checkpoint: only these are looked
        #: at, so a round costs what changed, not every followed task
        self._dirty: dict[str, TaskState] = {}
        self._tombstones: list[tuple[float, str]] = []
        #: tasks whose first or final checkpoint is waiting: written at once
        self._urgent_tasks: dict[str, TaskState] = {}
        self._urgent = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._lag_updated = 0.0
        self._writes: set[asyncio.Task[None]] = set()

    def watch(self, task: TaskState) -> None:
        """Keep writing this task's checkpoint until its final one is written."""
        self._tasks[task.task_id] = task
        self._dirty[task.task_id] = task

    def watched(self, which: Callable[[str], bool]) -> list[TaskState]:
        """Watched tasks that ``which`` selects (ended ones awaiting their final write too)."""
        return [task for task_id, task in self._tasks.items() if which(task_id)]

    def release(self, task: TaskState) -> None:
        """The task is no longer followed here, unfinished (gone from the platform,
        or its worker crashed): its last checkpoint is written if due, and it
        leaves the table, which therefore holds only followed tasks."""
        if task.finished:
            return  # its final checkpoint is on its way; that write removes it
        self._tasks.pop(task.task_id, None)
        self._dirty.pop(task.task_id, None)
        record = self._record(task)
        if record is not None:
            writing = self._loop.create_task(self._write_alone(record))
            self._writes.add(writing)
            writing.add_done_callback(self._writes.discard)

    async def _write_alone(self, record: OutRecord) -> None:
        await self._publish([record])

    def forget(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._tasks.pop(task_id, None)

    def written(self, task: TaskState, sequence: int) -> None:
        """An envelope of ``task`` is in Kafka (committed, or in the open
        transaction). Without transactions, a task's first checkpoint and its
        final one are written at once, not at the next interval: a task with no
        checkpoint at all is the one a crash would make the next owner start
        from scratch (sequence from 1 again). With them, the transaction
        carries every checkpoint of its envelopes (``covering``)."""
        if self._transactional:
            self._covered[task.task_id] = task
            return
        self._dirty[task.task_id] = task
        if task.checkpointed == 0 or task.finished:
            self._urgent_tasks[task.task_id] = task
            self._urgent.set()

    def covering(self) -> list[OutRecord]:
        """The checkpoints covering exactly the envelopes written into the open
        transaction (their ``on_written`` ran): committed with them, so a
        checkpoint never leads or lags what consumers can read."""
        covered, self._covered = self._covered, {}
        watched = self._tasks
        for task_id in covered:
            self._dirty.pop(task_id, None)  # the periodic round need not write it again
        return [r for t in covered.values() if t.task_id in watched and (r := self._record(t))]

    async def run(self) -> None:
        loop = self._loop
        interval = self._config.checkpoint_interval_s
        next_round = loop.time() + interval
        while True:
            # asyncio.timeout, not wait_for: on 3.11, wait_for can swallow a
            # cancellation that lands as the event fires (the task then never stops).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_round - loop.time())):
                    await self._urgent.wait()
            self._urgent.clear()
            if loop.time() >= next_round:
                next_round = loop.time() + interval
                await self.write_due()
            else:
                await self.write_urgent()

    async def write_urgent(self) -> None:
        """Only the tasks whose first or final checkpoint waits."""
        urgent, self._urgent_tasks = self._urgent_tasks, {}
        for task_id in urgent:
            self._dirty.pop(task_id, None)
        await self._write(urgent.values())

    async def write_due(self) -> None:
        dirty, self._dirty = self._dirty, {}
        self._urgent_tasks.clear()
        await self._write(dirty.values(), self._due_tombstones())
        now_ = self._loop.time()
        if now_ - self._lag_updated >= self._config.checkpoint_interval_s:
            self._lag_updated = now_
            self._update_lag()

    async def _write(self, tasks: Iterable[TaskState], extra: Iterable[OutRecord] = ()) -> None:
        # Built a slice at a time too: building a round's 2,000 records at once
        # stalled the loop for 35 ms every interval at 10,000 streams.
        watched = self._tasks
        due = (r for t in list(tasks) if t.task_id in watched and (r := self._record(t)))
        records = itertools.chain(due, extra)
        while batch := list(itertools.islice(records, _SLICE)):
            await self._publish(batch)
            await asyncio.sleep(0)  # let the streams queue their events in between

    async def flush(self, tasks: Iterable[TaskState], timeout_s: float) -> None:
        """Write these tasks' checkpoints now and wait until Kafka has them."""
        batch = list({task.task_id: task for task in tasks}.values())
        # The events already read are on their way to Kafka: let them land, so
        # the checkpoint covers them and the next owner does not repeat them.
        deadline = self._loop.time() + timeout_s / 2
        while any(t.acks.done < t.sequence for t in batch) and self._loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        records = [r for task in batch if (r := self._record(task, force=True))]
        if records:
            done = completion(records)
            await self._publish(records)
            try:
                await asyncio.wait_for(done, timeout_s)
            except TimeoutError:
                log.warning(
                    "checkpoints not acknowledged in time; the next owner may repeat events",
                    extra={"tasks": len(records)},
                )
        self.forget(task.task_id for task in batch)
        self._update_lag()

    def _record(self, task: TaskState, *, force: bool = False) -> OutRecord | None:
        done = task.acks.done
        # The task_finished is in Kafka; final once its activity thread is too
        # (the activity record takes no sequence: its on_written clears the flag).
        finished = task.finished and done == task.sequence
        final = finished and not task.activity_due
        due = done > task.checkpointed or (final and not task.checkpoint_final)
        if not due and not (force and done >= 1):
            return None
        checkpoint = Checkpoint(
            task_id=task.task_id,
            agent_id=task.agent_id,
            organization_id=task.organization_id,
            sequence=done,
            last_sse_id=task.acked_sse_id,
            last_event_id=task.acked_event_id,
            last_stream_event_id=task.acked_stream_event_id,
            first_event_id=task.first_event_id,
            status=task.acked_status,
            finished=finished,
            written_at=now(),
            activity_due=finished and task.activity_due,
        )
        record = OutRecord(
            self._config.checkpoints_topic,
            task.key,
            checkpoint.encode(),
            [],
            "checkpoint",
            self._loop.time(),
            partition=partition_for(task.task_id, self._config.partitions),
        )

        def written(_: OutRecord) -> None:
            task.checkpointed = max(task.checkpointed, done)
            if final and not task.checkpoint_final:
                task.checkpoint_final = True
                self._tasks.pop(task.task_id, None)
                heapq.heappush(
                    self._tombstones,
                    (now() + self._config.checkpoint_retention_s, task.task_id),
                )

        record.on_delivered = written
        return record

    def _due_tombstones(self) -> list[OutRecord]:
        due: list[OutRecord] = []
        current = now()
        while self._tombstones and self._tombstones[0][0] <= current:
            _, task_id = heapq.heappop(self._tombstones)
            due.append(self.tombstone(task_id))
        return due

    def tombstone(self, task_id: str) -> OutRecord:
        """A ``None`` value: compaction then removes the task's checkpoint."""
        return OutRecord(
            self._config.checkpoints_topic,
            task_id.encode(),
            None,
            [],
            "checkpoint",
            self._loop.time(),
            partition=partition_for(task_id, self._config.partitions),
        )

    def expire(self, checkpoints: Iterable[Checkpoint]) -> list[OutRecord]:
        """Tombstones for loaded checkpoints of finished tasks past the retention
        (a restart forgets the in-memory schedule, so loading re-derives it)."""
        current = now()
        expired = []
        for checkpoint in checkpoints:
            if checkpoint.final:  # one with its activity due stays until that is out
                due = checkpoint.written_at + self._config.checkpoint_retention_s
                if due <= current:
                    expired.append(self.tombstone(checkpoint.task_id))
                else:
                    heapq.heappush(self._tombstones, (due, checkpoint.task_id))
        return expired

    def _update_lag(self) -> None:
        lag = sum(max(0, t.acks.done - t.checkpointed) for t in self._tasks.values())
        self._metrics.checkpoint_lag.set(lag)
