"""The transactional delivery loop against a sink that records each transaction
and fails on purpose (the seam where a fake belongs; the real broker runs the
same loop in tests/app and tests/sinks/kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.metrics import sample

from bridge.core.record import OutRecord
from bridge.core.retry import RetryPolicy
from bridge.errors import (
    AuthError,
    BridgeError,
    FencedError,
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

    @staticmethod
    def classify(error: BaseException) -> BridgeError:
        assert isinstance(error, BridgeError)
        return error

    def begin(self) -> None:
        assert self.open is None, "a transaction began inside another"
        self.open = []

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
        return future

    async def commit(self) -> None:
        assert self.open is not None
        self.commit_attempts += 1
        if self.commit_errors:
            raise self.commit_errors.pop(0)
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
