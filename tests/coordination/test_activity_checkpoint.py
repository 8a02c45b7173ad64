"""A task whose activity thread is due: its checkpoint says so and is not final;
the final one follows the thread; old checkpoints read as not due."""

from __future__ import annotations

import orjson
import pytest

from bridge.config import CoordinationConfig
from bridge.coordination.checkpointer import Checkpointer
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

    def checkpoints(self) -> list[Checkpoint]:
        return [c for r in self.records if r.value and (c := Checkpoint.decode(r.value))]


def finished_task(*, activity_due: bool) -> TaskState:
    task = TaskState("t-1", "a-1", "o-1")
    for sequence in (1, 2):
        task.sequence = sequence
        task.track(PendingEnvelope(sequence, str(sequence), f"e{sequence}", "completed", True))
        task.delivered(sequence)
    task.finished = True
    task.activity_due = activity_due
    return task


def test_a_checkpoint_without_activity_due_reads_as_not_due() -> None:
    written = Checkpoint("t", "a", "o", 3, "3", "e3", "e3", "e1", "completed", True, 1.0, True)
    data = orjson.loads(written.encode())
    assert data["activity_due"] is True
    del data["activity_due"]  # a checkpoint of an older bridge
    old = Checkpoint.decode(orjson.dumps(data))
    assert old is not None and old.finished and not old.activity_due and old.final
    again = Checkpoint.decode(written.encode())
    assert again is not None and again.activity_due and not again.final


async def test_finished_with_activity_due_is_written_but_not_final_then_final() -> None:
    sink = Sink()
    checkpointer = Checkpointer(CoordinationConfig(partitions=6), sink.publish, Metrics())
    task = finished_task(activity_due=True)
    checkpointer.watch(task)
    await checkpointer.write_due()
    (first,) = sink.checkpoints()
    assert first.finished and first.activity_due and not first.final
    assert not task.checkpoint_final
    assert checkpointer.watched(lambda _: True) == [task], "still watched"
    task.activity_due = False  # the activity record was written
    checkpointer.written(task, task.sequence)
    await checkpointer.write_urgent()
    final = sink.checkpoints()[-1]
    assert final.finished and not final.activity_due and final.final
    assert final.sequence == first.sequence == 2, "no sequence taken by the activity record"
    assert task.checkpoint_final and checkpointer.watched(lambda _: True) == []


async def test_transactional_the_final_checkpoint_covers_the_activity_record() -> None:
    sink = Sink()
    checkpointer = Checkpointer(
        CoordinationConfig(partitions=6), sink.publish, Metrics(), transactional=True
    )
    task = finished_task(activity_due=True)
    checkpointer.watch(task)
    checkpointer.written(task, 2)
    (record,) = checkpointer.covering()
    checkpoint = Checkpoint.decode(record.value or b"")
    assert checkpoint is not None and not checkpoint.final
    record.on_delivered and record.on_delivered(record)
    task.activity_due = False
    checkpointer.written(task, 2)  # the activity record's on_written
    (record,) = checkpointer.covering()
    checkpoint = Checkpoint.decode(record.value or b"")
    assert checkpoint is not None and checkpoint.final


def test_resuming_from_a_checkpoint_with_activity_due() -> None:
    due = Checkpoint("t", "a", "o", 3, "3", "e3", "e3", "e1", "completed", True, 1.0, True)
    state = TaskState.from_checkpoint(due)
    assert state.finished and state.activity_due and not state.checkpoint_final
    done = Checkpoint("t", "a", "o", 3, "3", "e3", "e3", "e1", "completed", True, 1.0)
    state = TaskState.from_checkpoint(done)
    assert state.finished and not state.activity_due and state.checkpoint_final


async def test_an_activity_due_checkpoint_is_not_tombstoned_at_retention() -> None:
    sink = Sink()
    checkpointer = Checkpointer(
        CoordinationConfig(partitions=6, checkpoint_retention_s=0), sink.publish, Metrics()
    )
    due = Checkpoint("t", "a", "o", 3, "3", "e3", "e3", "e1", "completed", True, 1.0, True)
    done = Checkpoint("u", "a", "o", 3, "3", "e3", "e3", "e1", "completed", True, 1.0)
    assert [r.key for r in checkpointer.expire([due, done])] == [b"u"]
