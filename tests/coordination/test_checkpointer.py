"""The checkpoint writer: what it writes, when, and that it stops when told."""

from __future__ import annotations

import asyncio

import pytest
from support.waiting import eventually

from bridge.config import CoordinationConfig
from bridge.coordination.checkpointer import Checkpointer
from bridge.coordination.partitioning import partition_for
from bridge.core.checkpoint import Checkpoint
from bridge.core.record import OutRecord
from bridge.core.task import PendingEnvelope, TaskState
from bridge.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(20)


class Sink:
    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def publish(self, records: list[OutRecord]) -> None:
        for record in records:
            self.records.append(record)
            if record.on_delivered is not None:
                record.on_delivered(record)


def task_with(acked: int, total: int, *, finished: bool = False) -> TaskState:
    task = TaskState("t-1", "a-1", "o-1")
    for sequence in range(1, total + 1):
        task.sequence = sequence
        task.track(PendingEnvelope(sequence, str(sequence), f"e{sequence}", "executing", True))
    for sequence in range(1, acked + 1):
        task.delivered(sequence)
    task.finished = finished
    return task


async def test_a_checkpoint_covers_only_the_acknowledged_run() -> None:
    sink = Sink()
    checkpointer = Checkpointer(CoordinationConfig(partitions=6), sink.publish, Metrics())
    task = task_with(acked=3, total=5)
    checkpointer.watch(task)
    await checkpointer.write_due()
    (record,) = sink.records
    checkpoint = Checkpoint.decode(record.value or b"")
    assert checkpoint is not None
    assert (checkpoint.sequence, checkpoint.last_sse_id, checkpoint.finished) == (3, "3", False)
    assert record.partition == partition_for("t-1", 6)
    assert task.checkpointed == 3
    await checkpointer.write_due()
    assert len(sink.records) == 1, "nothing new acknowledged: nothing written"


async def test_final_checkpoint_then_tombstone_after_retention() -> None:
    sink = Sink()
    config = CoordinationConfig(partitions=6, checkpoint_retention_s=0)
    checkpointer = Checkpointer(config, sink.publish, Metrics())
    task = task_with(acked=4, total=4, finished=True)
    checkpointer.watch(task)
    await checkpointer.write_due()
    final = Checkpoint.decode(sink.records[0].value or b"")
    assert final is not None and final.finished
    await checkpointer.write_due()
    assert sink.records[-1].value is None  # the tombstone
    assert sink.records[-1].key == b"t-1"


async def test_run_stops_when_cancelled_even_while_woken_constantly() -> None:
    # Regression: with asyncio.wait_for, a cancellation landing as the event
    # fired was swallowed on Python 3.11 and the shutdown waited for ever.
    sink = Sink()
    config = CoordinationConfig(partitions=6, checkpoint_interval_s=0.001)
    for _ in range(200):
        checkpointer = Checkpointer(config, sink.publish, Metrics())
        task = task_with(acked=0, total=0)
        runner = asyncio.create_task(checkpointer.run())
        for _ in range(3):
            checkpointer.written(task, 1)
            # The scenario, not a wait: one turn of the loop per wake-up, so the
            # cancellation below can land as an event fires (the regression).
            await asyncio.sleep(0)
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=1.0)
        assert done, "the checkpointer ignored its cancellation"


async def test_a_first_checkpoint_is_written_at_once_and_alone() -> None:
    # Waking for one task's first checkpoint used to write every due one with
    # it: at 10,000 streams, thousands of records at once ahead of the events.
    sink = Sink()
    config = CoordinationConfig(partitions=6, checkpoint_interval_s=30)
    checkpointer = Checkpointer(config, sink.publish, Metrics())
    older = task_with(acked=1, total=2)
    checkpointer.watch(older)
    await checkpointer.write_due()
    assert older.checkpointed == 1
    runner = asyncio.get_running_loop().create_task(checkpointer.run())
    try:
        older.delivered(2)
        checkpointer.written(older, 2)  # progress: due at the next round, in 30 s
        new = TaskState("t-2", "a-1", "o-1")
        new.sequence = 1
        new.track(PendingEnvelope(1, "1", "e1", "executing", True))
        new.delivered(1)
        checkpointer.watch(new)
        checkpointer.written(new, 1)  # first checkpoint: now
        await eventually(
            lambda: len(sink.records) > 1,
            timeout_s=1,
            interval_s=0.01,
            what="a checkpoint after the first one",
        )
        assert [r.key for r in sink.records[1:]] == [b"t-2"]
        assert older.checkpointed == 1, "the other task waits for its round"
    finally:
        runner.cancel()


async def test_a_task_released_unfinished_leaves_the_table_after_its_last_checkpoint() -> None:
    sink = Sink()
    checkpointer = Checkpointer(CoordinationConfig(partitions=6), sink.publish, Metrics())
    task = task_with(acked=3, total=3)
    checkpointer.watch(task)
    checkpointer.release(task)
    for _ in range(100):
        if sink.records:
            break
        await asyncio.sleep(0.01)
    (record,) = sink.records
    assert Checkpoint.decode(record.value or b"") is not None
    assert checkpointer.watched(lambda _: True) == []  # the table holds followed tasks only
    finished = task_with(acked=2, total=2, finished=True)
    checkpointer.watch(finished)
    checkpointer.release(finished)  # its final checkpoint is still to come: kept
    assert checkpointer.watched(lambda _: True) == [finished]
