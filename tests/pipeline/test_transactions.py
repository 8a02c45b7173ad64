"""The transactional delivery loop against a sink that records each transaction
and fails on purpose (the seam where a fake belongs; the real broker runs the
same loop in tests/app and tests/sinks/kafka)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.metrics import sample
from support.waiting import eventually

from bridge.core.record import OutRecord
from bridge.core.retry import RetryPolicy
from bridge.core.task import PendingEnvelope, TaskState
from bridge.errors import (
    AuthError,
    BridgeError,
    FencedError,
    GroupGenerationError,
    RecordTooLargeError,
    TransactionAbortedError,
    UnavailableError,
)
from bridge.observability.metrics import Metrics
from bridge.pipeline.transactions import TransactionalDelivery

pytestmark = pytest.mark.timeout(10)


class TransactionLog:
    """A sink that keeps what each transaction held and how it ended."""

    def __init__(self) -> None:
        self.open: list[bytes | None] | None = None
        self.committed: list[list[bytes | None]] = []
        self.aborted: list[list[bytes | None]] = []
        #: errors the next commits raise, in order
        self.commit_errors: list[BridgeError] = []
        #: values whose delivery report fails, once each, with the error given
        self.report_errors: dict[bytes | None, BridgeError] = {}
        #: values refused at write while present
        self.refused: dict[bytes | None, BridgeError] = {}
        self.commit_attempts = 0
        #: errors the next aborts raise, in order
        self.abort_errors: list[BridgeError] = []
        self.resets = 0
        #: errors the next offset sends raise, in order
        self.offset_errors: list[BridgeError] = []
        #: a delivery report of the open transaction failed
        self.open_failed = False

    @staticmethod
    def classify(error: BaseException) -> BridgeError:
        assert isinstance(error, BridgeError)
        return error

    async def begin(self) -> None:
        assert self.open is None, "a transaction began inside another"
        self.open = []
        self.open_failed = False

    async def write(self, record: OutRecord) -> asyncio.Future[Any]:
        assert self.open is not None, "a write outside a transaction"
        if record.value in self.refused:
            raise self.refused[record.value]
        self.open.append(record.value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.report_errors.pop(record.value, None)
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            self.open_failed = True
        return future

    async def write_quiet(
        self, record: OutRecord, failures: list[tuple[OutRecord, BaseException]]
    ) -> None:
        """As librdkafka with delivery.report.only.error: a failure is noted, a
        success only by the commit."""
        assert self.open is not None, "a write outside a transaction"
        if record.value in self.refused:
            raise self.refused[record.value]
        self.open.append(record.value)
        error = self.report_errors.pop(record.value, None)
        if error is not None:
            failures.append((record, error))
            self.open_failed = True

    async def flush(self) -> int:
        assert self.open is not None, "a flush outside a transaction"
        return 0

    async def send_offsets(self, offsets: list[Any], group_metadata: Any) -> None:
        assert self.open is not None, "offsets sent outside a transaction"
        if self.offset_errors:
            raise self.offset_errors.pop(0)
        # kept among the records, so a test sees which transaction carried them
        self.open.append(f"{group_metadata}:{','.join(map(str, offsets))}".encode())

    async def commit(self) -> None:
        assert self.open is not None
        self.commit_attempts += 1
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        if self.open_failed:  # as librdkafka: a failed record fails the commit
            raise TransactionAbortedError("a record of the transaction failed")
        self.committed.append(self.open)
        self.open = None

    async def abort(self) -> None:
        assert self.open is not None
        if self.abort_errors:
            raise self.abort_errors.pop(0)
        self.aborted.append(self.open)
        self.open = None

    async def reset(self) -> None:
        self.resets += 1
        self.open = None  # a new producer: the old transaction is gone


class Inputs:
    """A consumer whose message offsets ride with transactions (``OffsetSource``);
    its group metadata is its name, and a rejection bumps its generation."""

    def __init__(self, group: str = "reports") -> None:
        self.offsets_pending = asyncio.Event()
        self._written: list[int] = []
        self.committed: list[list[int]] = []
        self.taken = 0
        self.group = group
        self.generation = 1
        #: the group dropped this member: a rejection fences it
        self.dropped = False

    def written(self, offset: int) -> None:
        self._written.append(offset)
        self.offsets_pending.set()

    def take_offsets(self) -> list[Any]:
        self.offsets_pending.clear()
        if self._written:
            self.taken += 1
        taken, self._written = self._written, []
        return taken

    def current(self, offsets: list[Any]) -> tuple[list[Any], Any] | None:
        return offsets, self.group if self.generation == 1 else f"{self.group}@{self.generation}"

    async def rejected(self) -> None:
        self.generation += 1
        if self.dropped:
            raise FencedError("dropped from the group")

    def offsets_committed(self, offsets: list[Any]) -> None:
        self.committed.append(offsets)


class Trace:
    """What happened to the records, in order: ("written" | "delivered", value)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes | None]] = []

    def record(self, value: bytes, *, joined: bool = False) -> OutRecord:
        return OutRecord(
            "t",
            b"k",
            value,
            [],
            "chunk",
            0.0,
            on_written=lambda r: self.events.append(("written", r.value)),
            on_delivered=lambda r: self.events.append(("delivered", r.value)),
            joined=joined,
        )

    def of(self, kind: str) -> list[bytes | None]:
        return [value for what, value in self.events if what == kind]


def delivery(
    sink: TransactionLog,
    queue: asyncio.Queue[OutRecord],
    *,
    covering: list[OutRecord] | None = None,
    max_records: int = 1000,
    linger_s: float = 0.01,
    interval_s: float = 60.0,
    metrics: Metrics | None = None,
    inputs: Inputs | None = None,
    proof: Inputs | None = None,
) -> TransactionalDelivery:
    pending = list(covering or [])

    def cover() -> list[OutRecord]:
        taken = list(pending)
        pending.clear()
        return taken

    return TransactionalDelivery(
        queue,
        sink,
        metrics or Metrics(),
        interval_s=interval_s,
        max_records=max_records,
        linger_s=linger_s,
        covering=cover,
        offsets=lambda: [source for source in (inputs, proof) if source is not None],
        retry=RetryPolicy(0.001, 0.01),
        held_retry_s=0.05,
    )


async def deliver(
    loop: TransactionalDelivery, queue: asyncio.Queue[OutRecord], *records: OutRecord
) -> None:
    runner = asyncio.create_task(loop.run())
    try:
        for record in records:
            queue.put_nowait(record)
        await asyncio.wait_for(loop.drain(), 5)
    finally:
        runner.cancel()


async def test_checkpoints_commit_in_the_transaction_of_the_envelopes_they_cover() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    checkpoint = trace.record(b"checkpoint")
    loop = delivery(sink, queue, covering=[checkpoint])
    await deliver(loop, queue, trace.record(b"a"), trace.record(b"b"))
    assert sink.committed == [[b"a", b"b", b"checkpoint"]]
    # written (the task's position moves, so the checkpoint covers it) before
    # the commit; delivered only after it
    assert trace.events[:2] == [("written", b"a"), ("written", b"b")]
    assert trace.of("delivered") == [b"a", b"b", b"checkpoint"]
    assert loop.committed == 1 and loop.delivered == 3


def output_of(inputs: Inputs, offset: int, record: OutRecord) -> OutRecord:
    """``record`` is the output of input message ``offset`` (as the consumer's
    progress hook chains it): written, it makes the offset sendable."""
    original = record.on_written

    def written(r: OutRecord) -> None:
        if original is not None:
            original(r)
        inputs.written(offset)

    record.on_written = written
    return record


async def test_input_offsets_commit_in_the_transaction_of_their_output() -> None:
    sink, trace, queue, inputs = TransactionLog(), Trace(), asyncio.Queue[OutRecord](), Inputs()
    checkpoint = trace.record(b"checkpoint")
    loop = delivery(sink, queue, covering=[checkpoint], inputs=inputs)
    await deliver(
        loop,
        queue,
        output_of(inputs, 7, trace.record(b"mirror-7")),
        output_of(inputs, 8, trace.record(b"dlq-8")),
    )
    assert sink.committed == [[b"mirror-7", b"dlq-8", b"checkpoint", b"reports:7,8"]]
    assert inputs.committed == [[7, 8]]


async def test_a_redone_transaction_sends_the_same_offsets_again() -> None:
    sink, trace, queue, inputs = TransactionLog(), Trace(), asyncio.Queue[OutRecord](), Inputs()
    sink.commit_errors = [TransactionAbortedError("coordinator aborted it")]
    loop = delivery(sink, queue, inputs=inputs)
    await deliver(loop, queue, output_of(inputs, 3, trace.record(b"mirror-3")))
    # the aborted transaction lost its offsets with its records; the redo carries both
    assert sink.aborted == [[b"mirror-3", b"reports:3"]]
    assert sink.committed == [[b"mirror-3", b"reports:3"]]
    assert inputs.taken == 1 and inputs.committed == [[3]]


async def test_offsets_without_output_commit_in_a_transaction_of_their_own() -> None:
    # a duplicate report publishes nothing, yet its offset must move
    sink, queue, inputs = TransactionLog(), asyncio.Queue[OutRecord](), Inputs()
    loop = delivery(sink, queue, inputs=inputs, interval_s=60.0)
    runner = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.05)
        assert sink.committed == []  # idle: no empty transactions
        inputs.written(11)
        await eventually(lambda: bool(inputs.committed), timeout_s=5, what="offsets committed")
    finally:
        runner.cancel()
    assert sink.committed == [[b"reports:11"]]
    assert inputs.committed == [[11]]


class Proof(Inputs):
    """The ownership group: the same positions in every transaction."""

    def __init__(self) -> None:
        super().__init__("ownership")

    def take_offsets(self) -> list[Any]:
        return [0]


async def test_every_transaction_proves_ownership_with_its_group_generation() -> None:
    sink, trace, queue, inputs, proof = (
        TransactionLog(),
        Trace(),
        asyncio.Queue[OutRecord](),
        Inputs(),
        Proof(),
    )
    loop = delivery(sink, queue, inputs=inputs, proof=proof, max_records=1)
    await deliver(
        loop, queue, output_of(inputs, 4, trace.record(b"mirror-4")), trace.record(b"event")
    )
    assert sink.committed == [
        [b"mirror-4", b"reports:4", b"ownership:0"],
        [b"event", b"ownership:0"],
    ]


async def test_offsets_refused_for_an_old_generation_are_sent_again_with_the_new_one() -> None:
    # a rebalance the cached metadata had not caught up with: redo, not stop
    sink, trace, queue, proof = TransactionLog(), Trace(), asyncio.Queue[OutRecord](), Proof()
    sink.offset_errors = [GroupGenerationError("ILLEGAL_GENERATION")]
    loop = delivery(sink, queue, proof=proof)
    await deliver(loop, queue, trace.record(b"event"))
    assert sink.aborted == [[b"event"]]
    assert sink.committed == [[b"event", b"ownership@2:0"]]
    assert trace.of("delivered") == [b"event"]


async def test_a_member_the_group_dropped_is_fenced_and_commits_nothing() -> None:
    # a zombie: paused past its session timeout, its tasks now stream elsewhere
    sink, trace, queue, proof = TransactionLog(), Trace(), asyncio.Queue[OutRecord](), Proof()
    sink.offset_errors = [GroupGenerationError("UNKNOWN_MEMBER_ID")]
    proof.dropped = True
    loop = delivery(sink, queue, proof=proof)
    queue.put_nowait(trace.record(b"after waking"))
    with pytest.raises(FencedError):
        await asyncio.wait_for(loop.run(), 5)
    assert sink.committed == []
    assert sink.aborted == [[b"after waking"]]  # aborted, so readers are not held up
    assert trace.of("delivered") == []


async def test_a_transaction_never_ends_inside_one_unit() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    loop = delivery(sink, queue, max_records=2)
    records = [
        trace.record(b"1"),
        trace.record(b"2a", joined=True),
        trace.record(b"2b", joined=True),
        trace.record(b"2c"),
        trace.record(b"3"),
    ]
    await deliver(loop, queue, *records)
    assert sink.committed[0] == [b"1", b"2a", b"2b", b"2c"]  # over max_records, not split
    assert [v for txn in sink.committed for v in txn] == [b"1", b"2a", b"2b", b"2c", b"3"]


async def test_an_idle_queue_ends_the_transaction_before_its_interval() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    loop = delivery(sink, queue, interval_s=60.0, linger_s=0.01)
    # drains within 5 s with a 60 s interval: the linger closed the transaction
    await deliver(loop, queue, trace.record(b"lone"))
    assert sink.committed == [[b"lone"]]


async def test_an_aborted_commit_redoes_the_same_transaction_once() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.commit_errors = [TransactionAbortedError("coordinator aborted it")]
    checkpoint = trace.record(b"checkpoint")
    metrics = Metrics()
    loop = delivery(sink, queue, covering=[checkpoint], metrics=metrics)
    await deliver(loop, queue, trace.record(b"a"), trace.record(b"b"))
    assert sink.aborted == [[b"a", b"b", b"checkpoint"]]
    assert sink.committed == [[b"a", b"b", b"checkpoint"]]
    assert sample(metrics, "xpander_bridge_transactions_total", outcome="aborted") == 1
    assert sample(metrics, "xpander_bridge_transactions_total", outcome="committed") == 1
    # callbacks ran once each: a redone transaction is not a second delivery
    assert trace.of("written") == [b"a", b"b", b"checkpoint"]
    assert trace.of("delivered") == [b"a", b"b", b"checkpoint"]


async def test_a_retriable_commit_error_commits_again_without_aborting() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.commit_errors = [UnavailableError("coordinator moving"), UnavailableError("still")]
    metrics = Metrics()
    loop = delivery(sink, queue, metrics=metrics)
    await deliver(loop, queue, trace.record(b"a"))
    assert sink.aborted == [] and sink.committed == [[b"a"]]
    assert sink.commit_attempts == 3
    assert sample(metrics, "xpander_bridge_publish_errors_total", reason="unavailable") >= 1


async def test_a_failed_delivery_report_aborts_and_redoes_the_whole_transaction() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.report_errors = {b"b": UnavailableError("leader moved")}
    loop = delivery(sink, queue)
    await deliver(loop, queue, trace.record(b"a"), trace.record(b"b"), trace.record(b"c"))
    assert sink.aborted == [[b"a", b"b", b"c"]]
    assert sink.committed == [[b"a", b"b", b"c"]]
    assert trace.of("delivered") == [b"a", b"b", b"c"]


async def test_a_record_refused_for_good_is_held_and_the_rest_commits() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.refused = {b"huge": RecordTooLargeError("too large")}
    metrics = Metrics()
    loop = delivery(sink, queue, metrics=metrics)
    runner = asyncio.create_task(loop.run())
    try:
        for value in (b"a", b"huge", b"c"):
            queue.put_nowait(trace.record(value))
        for _ in range(200):
            if trace.of("delivered") == [b"a", b"c"]:
                break
            await asyncio.sleep(0.01)
        assert trace.of("delivered") == [b"a", b"c"]
        assert loop.held == 1 and not loop.healthy
        assert sample(metrics, "xpander_bridge_records_held") == 1
        sink.refused = {}  # the broker's limit was raised: its next try passes, alone
        await asyncio.wait_for(loop.drain(), 5)
    finally:
        runner.cancel()
    assert trace.of("delivered") == [b"a", b"c", b"huge"]
    assert sink.committed[-1] == [b"huge"] and loop.held == 0 and loop.healthy


async def test_refusal_of_every_send_halts_then_resumes() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.refused = {b"a": AuthError("topic authorization failed")}
    loop = delivery(sink, queue)
    runner = asyncio.create_task(loop.run())
    try:
        queue.put_nowait(trace.record(b"a"))
        for _ in range(200):
            if loop.halted:
                break
            await asyncio.sleep(0.01)
        assert loop.halted and trace.of("delivered") == []
        sink.refused = {}
        await asyncio.wait_for(loop.drain(), 5)
    finally:
        runner.cancel()
    assert trace.of("delivered") == [b"a"] and not loop.halted


async def test_a_fenced_producer_stops_the_loop_and_delivers_nothing() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.commit_errors = [FencedError("another replica took the transactional id")]
    loop = delivery(sink, queue)
    queue.put_nowait(trace.record(b"a"))
    with pytest.raises(FencedError):
        await asyncio.wait_for(loop.run(), 5)
    assert trace.of("delivered") == [] and sink.committed == []


async def test_a_transaction_that_cannot_be_aborted_gets_a_new_producer() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    sink.commit_errors = [TransactionAbortedError("sequence gap")]
    sink.abort_errors = [UnavailableError("epoch bump refused")] * 5
    loop = delivery(sink, queue)
    await deliver(loop, queue, trace.record(b"a"))
    assert sink.resets == 1
    assert sink.committed == [[b"a"]] and trace.of("delivered") == [b"a"]


class FlushingLog(TransactionLog):
    """As librdkafka: the delivery reports of some records come only when the
    commit flushes the transaction."""

    def __init__(self, flushed_at_commit: set[bytes]) -> None:
        super().__init__()
        self.flushed_at_commit = flushed_at_commit
        self.unflushed: list[tuple[OutRecord, list[tuple[OutRecord, BaseException]]]] = []

    async def write_quiet(
        self, record: OutRecord, failures: list[tuple[OutRecord, BaseException]]
    ) -> None:
        if record.value not in self.flushed_at_commit:
            await super().write_quiet(record, failures)
            return
        assert self.open is not None
        self.open.append(record.value)
        self.unflushed.append((record, failures))

    async def commit(self) -> None:
        for record, failures in self.unflushed:
            error = self.report_errors.pop(record.value, None)
            if error is not None:
                failures.append((record, error))
                self.open_failed = True
        self.unflushed = []
        await super().commit()


async def test_the_checkpoints_round_trip_overlaps_the_commit() -> None:
    # Waiting for the checkpoints' reports before the offsets and the commit
    # added their round trip to every transaction; the commit flushes them.
    sink, trace, queue = FlushingLog({b"checkpoint"}), Trace(), asyncio.Queue[OutRecord]()
    checkpoint = trace.record(b"checkpoint")
    loop = delivery(sink, queue, covering=[checkpoint])
    await deliver(loop, queue, trace.record(b"a"))
    assert sink.committed == [[b"a", b"checkpoint"]]
    assert trace.of("delivered") == [b"a", b"checkpoint"]


async def test_a_failed_checkpoint_found_at_the_commit_redoes_the_transaction() -> None:
    sink, trace, queue = FlushingLog({b"checkpoint"}), Trace(), asyncio.Queue[OutRecord]()
    sink.commit_errors = [TransactionAbortedError("a record of it failed")]
    checkpoint = trace.record(b"checkpoint")
    loop = delivery(sink, queue, covering=[checkpoint])
    await deliver(loop, queue, trace.record(b"a"))
    assert sink.aborted == [[b"a", b"checkpoint"]]
    assert sink.committed == [[b"a", b"checkpoint"]]
    assert trace.of("delivered") == [b"a", b"checkpoint"]


async def test_records_that_waited_an_interval_already_commit_without_waiting_another() -> None:
    # Under load records queue while the previous transaction commits: the
    # window counts from when the oldest came in, not from when it was taken.
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    loop = delivery(sink, queue, interval_s=30.0, linger_s=30.0)
    waited = trace.record(b"waited")
    waited.received_at = asyncio.get_running_loop().time() - 30.0
    await deliver(loop, queue, waited)  # (another 30 s would outlast deliver's 5 s)
    assert sink.committed == [[b"waited"]]


async def test_a_fresh_record_still_waits_for_company_within_the_interval() -> None:
    sink, trace, queue = TransactionLog(), Trace(), asyncio.Queue[OutRecord]()
    loop = delivery(sink, queue, interval_s=30.0, linger_s=30.0)
    runner = asyncio.create_task(loop.run())
    try:
        now = asyncio.get_running_loop().time()
        first, second = trace.record(b"first"), trace.record(b"second")
        first.received_at = second.received_at = now
        queue.put_nowait(first)
        await asyncio.sleep(0.2)
        assert sink.committed == []  # the window is open
        queue.put_nowait(second)
        await asyncio.sleep(0.2)
        assert sink.committed == []
    finally:
        runner.cancel()


class OneTask:
    """A task whose envelopes move its position when written, and whose
    checkpoint (``ckpt:<position>``) covers them, as the checkpointer does."""

    def __init__(self) -> None:
        self.task = TaskState("task-1", "agent", "org")
        self.moved = False

    def envelope(self, value: bytes) -> OutRecord:
        sequence = self.task.sequence = self.task.sequence + 1
        self.task.track(PendingEnvelope(sequence, str(sequence), value.decode(), None, True))

        def written(_: OutRecord) -> None:
            self.task.delivered(sequence)
            self.moved = True

        return OutRecord("t", b"task-1", value, [], "chunk", 0.0, on_written=written)

    def covering(self) -> list[OutRecord]:
        if not self.moved:
            return []
        self.moved = False
        value = f"ckpt:{self.task.acks.done}".encode()
        return [OutRecord("checkpoints", b"task-1", value, [], "checkpoint", 0.0)]


async def test_a_record_refused_in_its_report_is_held_and_no_checkpoint_passes_it() -> None:
    # The envelopes are flushed before any checkpoint is handed over, so a
    # checkpoint never reaches the log before what it covers; one refused for
    # good is then held, and the checkpoint stops before it until it is written.
    sink, queue, one = TransactionLog(), asyncio.Queue[OutRecord](), OneTask()
    sink.report_errors = {b"huge": RecordTooLargeError("over the topic's max.message.bytes")}
    loop = TransactionalDelivery(
        queue,
        sink,
        Metrics(),
        interval_s=60.0,
        max_records=1000,
        linger_s=0.01,
        covering=one.covering,
        retry=RetryPolicy(0.001, 0.01),
        held_retry_s=0.05,
    )
    await deliver(loop, queue, one.envelope(b"a"), one.envelope(b"huge"), one.envelope(b"c"))
    assert sink.aborted == [[b"a", b"huge", b"c"]], "no checkpoint sent before the flush"
    assert sink.committed == [[b"a", b"c", b"ckpt:1"], [b"huge", b"ckpt:3"]]
    assert one.task.acks.done == 3 and one.task.acked_event_id == "c"
    assert not one.task.pending


async def test_checkpoints_are_handed_over_only_once_their_envelopes_are_flushed() -> None:
    # A broker that shows aborted transactions (tansu) must never hold a
    # checkpoint whose envelopes were not written: after a crash the next
    # owner would resume past them (seen: a sequence gap after a SIGKILL).
    class Watching(TransactionLog):
        def __init__(self) -> None:
            super().__init__()
            self.at_flush: list[list[bytes | None]] = []

        async def flush(self) -> int:
            assert self.open is not None
            self.at_flush.append(list(self.open))
            return await super().flush()

    sink, trace, queue = Watching(), Trace(), asyncio.Queue[OutRecord]()
    loop = delivery(sink, queue, covering=[trace.record(b"checkpoint")])
    await deliver(loop, queue, trace.record(b"a"), trace.record(b"b"))
    assert sink.at_flush == [[b"a", b"b"]]
    assert sink.committed == [[b"a", b"b", b"checkpoint"]]


async def test_offsets_alone_in_an_aborted_transaction_are_sent_again_not_taken_as_done() -> None:
    # The redo loop stopped once no record was left: the offsets of the aborted
    # attempt were then reported committed though Kafka never had them.
    sink, queue, inputs = TransactionLog(), asyncio.Queue[OutRecord](), Inputs()
    sink.commit_errors = [TransactionAbortedError("the coordinator aborted it")]
    loop = delivery(sink, queue, inputs=inputs, interval_s=60.0)
    runner = asyncio.create_task(loop.run())
    try:
        inputs.written(11)
        await eventually(lambda: bool(inputs.committed), timeout_s=5, what="offsets committed")
    finally:
        runner.cancel()
    assert sink.aborted == [[b"reports:11"]]
    assert sink.committed == [[b"reports:11"]], "the offsets were committed only by the redo"
    assert inputs.committed == [[11]]


# --- two producers taking turns (pipelined transactions) ----------------------------


class Partition:
    """One partition as a broker keeps it: records in the order they arrived,
    each tagged with its transaction; read_committed shows the committed ones."""

    def __init__(self) -> None:
        self.log: list[tuple[tuple[str, int], bytes | None]] = []
        self.outcomes: dict[tuple[str, int], str] = {}

    def read_committed(self) -> list[bytes | None]:
        return [value for txn, value in self.log if self.outcomes.get(txn) == "committed"]


class Lane(TransactionLog):
    """A transactional producer writing into a shared partition; its commit can
    be held at a gate, and every step yields, as a broker's round trip would."""

    def __init__(self, name: str, partition: Partition) -> None:
        super().__init__()
        self.name = name
        self.partition = partition
        self.serial = 0
        #: commits wait here while it is clear
        self.gate = asyncio.Event()
        self.gate.set()
        #: values flushed, in order (written, and answered)
        self.flushed: list[bytes | None] = []
        self._unflushed = 0
        self.committing = False
        #: when set, failures at random: failed reports, aborted and retriable commits
        self.chaos: random.Random | None = None

    @property
    def txn(self) -> tuple[str, int]:
        return (self.name, self.serial)

    async def begin(self) -> None:
        await super().begin()
        self.serial += 1
        self._unflushed = 0

    async def write_quiet(
        self, record: OutRecord, failures: list[tuple[OutRecord, BaseException]]
    ) -> None:
        if self.chaos is not None and self.chaos.random() < 0.03:
            self.report_errors[record.value] = UnavailableError("a batch timed out")
        await super().write_quiet(record, failures)
        self.partition.log.append((self.txn, record.value))

    async def send_offsets(self, offsets: list[Any], group_metadata: Any) -> None:
        await super().send_offsets(offsets, group_metadata)
        assert self.open is not None
        self.partition.log.append((self.txn, self.open[-1]))

    async def flush(self) -> int:
        await asyncio.sleep(0.001)
        assert self.open is not None
        self.flushed.extend(self.open[self._unflushed :])
        self._unflushed = len(self.open)
        return await super().flush()

    async def commit(self) -> None:
        self.committing = True
        try:
            await self.gate.wait()
            await asyncio.sleep(0.001)
            if self.chaos is not None and (draw := self.chaos.random()) < 0.25:
                self.commit_errors.append(
                    TransactionAbortedError("the coordinator aborted it")
                    if draw < 0.15
                    else UnavailableError("the coordinator moved")
                )
            await super().commit()
        finally:
            self.committing = False
        self.partition.outcomes[self.txn] = "committed"

    async def abort(self) -> None:
        await super().abort()
        self.partition.outcomes[self.txn] = "aborted"

    async def reset(self) -> None:
        await super().reset()
        self.partition.outcomes[self.txn] = "aborted"


def pipelined(
    queue: asyncio.Queue[OutRecord],
    *,
    covering: Callable[[], list[OutRecord]] | None = None,
    inputs: Inputs | None = None,
    max_records: int = 1,
    metrics: Metrics | None = None,
) -> tuple[TransactionalDelivery, Lane, Lane, Partition]:
    partition = Partition()
    first, second = Lane("A", partition), Lane("B", partition)
    loop = TransactionalDelivery(
        queue,
        first,
        metrics or Metrics(),
        interval_s=60.0,
        max_records=max_records,
        linger_s=0.01,
        partner=second,
        covering=covering,
        offsets=lambda: [inputs] if inputs is not None else [],
        retry=RetryPolicy(0.001, 0.01),
        held_retry_s=0.05,
    )
    return loop, first, second, partition


@contextlib.asynccontextmanager
async def written_behind_a_commit(
    loop: TransactionalDelivery,
    queue: asyncio.Queue[OutRecord],
    lanes: tuple[Lane, Lane],
    ahead: OutRecord,
    behind: OutRecord,
) -> AsyncIterator[None]:
    """``ahead`` committing on the first producer, held there until ``behind``
    is written on the second; the body runs then, and the commit goes on when
    it leaves; the block ends once everything is delivered."""
    first, second = lanes
    first.gate.clear()
    runner = asyncio.create_task(loop.run())
    try:
        queue.put_nowait(ahead)
        await eventually(lambda: first.committing, timeout_s=5, what="the first committing")
        queue.put_nowait(behind)
        await eventually(
            lambda: second.flushed == [behind.value], timeout_s=5, what="the second written"
        )
        yield
        first.gate.set()
        await asyncio.wait_for(loop.drain(), 5)
    finally:
        runner.cancel()


async def test_the_next_transaction_is_written_while_the_one_ahead_commits() -> None:
    queue, trace = asyncio.Queue[OutRecord](), Trace()
    loop, first, second, _ = pipelined(queue)
    a, b = trace.record(b"a"), trace.record(b"b")
    async with written_behind_a_commit(loop, queue, (first, second), a, b):
        # commits in order: b is not even covered while a commits
        assert first.committing and not second.committing
        assert trace.of("written") == [b"a"] and trace.of("delivered") == []
    assert first.committed == [[b"a"]] and second.committed == [[b"b"]]
    assert trace.of("delivered") == [b"a", b"b"] and loop.overlapped == 1


async def test_an_abort_ahead_aborts_the_one_behind_and_both_are_redone_in_order() -> None:
    # Else b (written after a's first attempt) would precede a's redo in the log.
    queue, one = asyncio.Queue[OutRecord](), OneTask()
    loop, first, second, partition = pipelined(queue, covering=one.covering)
    first.commit_errors = [TransactionAbortedError("the coordinator aborted it")]
    a, b = one.envelope(b"a"), one.envelope(b"b")
    async with written_behind_a_commit(loop, queue, (first, second), a, b):
        pass
    assert first.aborted == [[b"a", b"ckpt:1"]] and second.aborted == [[b"b"]]
    assert first.committed == [[b"a", b"ckpt:1"]] and second.committed == [[b"b", b"ckpt:2"]]
    assert partition.read_committed() == [b"a", b"ckpt:1", b"b", b"ckpt:2"]


async def test_a_failed_write_behind_is_redone_after_the_one_ahead_commits() -> None:
    queue, one = asyncio.Queue[OutRecord](), OneTask()
    loop, first, second, partition = pipelined(queue, covering=one.covering)
    second.report_errors = {b"b": UnavailableError("a batch timed out")}
    await deliver(loop, queue, one.envelope(b"a"), one.envelope(b"b"))
    assert first.aborted == [] and second.aborted == [[b"b"]]
    assert partition.read_committed() == [b"a", b"ckpt:1", b"b", b"ckpt:2"]


async def test_a_fenced_producer_behind_stops_the_loop_even_while_it_waits_for_records() -> None:
    queue, trace = asyncio.Queue[OutRecord](), Trace()
    loop, _, second, _ = pipelined(queue)
    second.commit_errors = [FencedError("another replica took the transactional id")]
    queue.put_nowait(trace.record(b"a"))
    queue.put_nowait(trace.record(b"b"))
    with pytest.raises(FencedError):
        await asyncio.wait_for(loop.run(), 5)
    assert second.committed == [] and trace.of("delivered") == [b"a"]


async def test_offsets_ride_in_commit_order_with_two_producers() -> None:
    queue, trace, inputs = asyncio.Queue[OutRecord](), Trace(), Inputs()
    loop, first, second, partition = pipelined(queue, inputs=inputs)
    a, b = output_of(inputs, 1, trace.record(b"a")), output_of(inputs, 2, trace.record(b"b"))
    async with written_behind_a_commit(loop, queue, (first, second), a, b):
        pass
    assert partition.read_committed() == [b"a", b"reports:1", b"b", b"reports:2"]
    assert inputs.committed == [[1], [2]]


@pytest.mark.parametrize("seed", range(12))
async def test_random_failures_on_both_producers_keep_every_record_once_and_in_order(
    seed: int,
) -> None:
    # The worst we can think of: aborted and retriable commits and failed
    # reports at random on both producers, slices of random size. A
    # read_committed reader must see each envelope once, in order, and the
    # checkpoints never going back.
    rng = random.Random(seed)
    queue, one = asyncio.Queue[OutRecord](), OneTask()
    loop, first, second, partition = pipelined(
        queue, covering=one.covering, max_records=rng.randint(1, 6)
    )
    first.chaos, second.chaos = random.Random(rng.random()), random.Random(rng.random())
    values = [f"e{n}".encode() for n in range(1, 61)]
    runner = asyncio.create_task(loop.run())
    try:
        for value in values:
            queue.put_nowait(one.envelope(value))
            if rng.random() < 0.3:
                await asyncio.sleep(0.002)
        await asyncio.wait_for(loop.drain(), 8)
    finally:
        runner.cancel()
    seen = partition.read_committed()
    assert [v for v in seen if v is not None and v.startswith(b"e")] == values
    positions = [int(v.split(b":")[1]) for v in seen if v is not None and v.startswith(b"ckpt")]
    assert positions == sorted(positions) and positions[-1] == 60
    assert first.aborted or second.aborted, "the chaos did nothing: the test proves nothing"


async def test_offsets_alone_make_one_transaction_with_two_producers() -> None:
    # Pending until the transaction ahead takes them: they must not start an
    # empty transaction on the other producer meanwhile.
    queue, inputs = asyncio.Queue[OutRecord](), Inputs()
    loop, first, second, _ = pipelined(queue, inputs=inputs)
    runner = asyncio.create_task(loop.run())
    try:
        inputs.written(1)
        await eventually(lambda: bool(inputs.committed), timeout_s=5, what="offsets committed")
        await asyncio.sleep(0.05)
    finally:
        runner.cancel()
    assert first.committed + second.committed == [[b"reports:1"]]
