"""An asyncio face on librdkafka's producer.

``produce`` hands a record to librdkafka (never blocks: a full local queue is
waited out here, which is the back-pressure) and returns a future that
resolves with librdkafka's delivery report; a transactional producer reports
only failures (``produce_quiet``: the commit reports the rest). Reports are
served by one thread that polls the producer (and by any call that drains,
such as flush or a commit); they reach the event loop in batches (one
wake-up per batch, not per record), with no lock between the threads and the
loop (``_report`` says why). Transaction calls block on the network or on
librdkafka's own thread, so they run on one worker thread, one at a time
(a daemon thread: ``DaemonExecutor`` says why).

confluent-kafka's ``AIOProducer`` is not used: it refuses headers (the
CloudEvents binding needs them) and adds a second buffer in front of
librdkafka's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, TypeVar, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.core.record import Headers, OutRecord
from bridge.kafka.calls import DaemonExecutor
from bridge.kafka.errors import kafka_error

__all__ = ["AsyncProducer", "Delivered", "needs_abort", "retriable"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long the poll thread waits for delivery reports before looking again
_POLL_S = 0.05
#: a full librdkafka queue is retried this often (it drains at broker speed)
_QUEUE_FULL_WAIT_S = 0.002


class Delivered(NamedTuple):
    """Where a record landed (its delivery report)."""

    topic: str
    partition: int
    offset: int


class AsyncProducer:
    """One librdkafka producer driven from asyncio. Make it inside the loop."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(options)
        #: reports served on librdkafka threads, for the loop (``_resolve``)
        self._reports: collections.deque[
            tuple[asyncio.Future[Delivered], KafkaError | None, Message]
        ] = collections.deque()
        #: a ``_resolve`` is scheduled and has not started taking reports yet
        self._resolving = False
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()
        #: transaction calls, one at a time, off the event loop
        self._calls = DaemonExecutor("kafka-txn")
        self._closed = False
        #: futures without a delivery report yet (failed at once if the producer dies)
        self._waiting: set[asyncio.Future[Delivered]] = set()
        #: the fatal error that ended the producer (fenced, broken idempotence)
        self._fatal: KafkaException | None = None
        #: only failures are reported (``delivery.report.only.error``): records
        #: go through ``produce_quiet``
        self.quiet = bool(options.get("delivery.report.only.error"))

    # --- records -------------------------------------------------------------

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> asyncio.Future[Delivered]:
        """Queue one record; the future resolves on its delivery report (raising
        the ``KafkaException`` librdkafka reported). A record refused at once
        (too large, unknown partition) raises here."""
        if self._fatal is not None:
            raise self._fatal
        assert not self.quiet, "a producer that reports only failures: produce_quiet"
        future: asyncio.Future[Delivered] = self._loop.create_future()
        # Taken out when its report is served (``_resolve``), not by a done
        # callback: that was one more loop callback per record, ~15% of the
        # cost of serving reports at 5,000 records a transaction.
        self._waiting.add(future)

        def report(error: KafkaError | None, message: Message) -> None:
            self._report(future, error, message)

        await self._hand_over(topic, value, key, headers, partition, report)
        return future

    async def produce_quiet(
        self, record: OutRecord, failures: list[tuple[OutRecord, BaseException]]
    ) -> None:
        """Queue one record on a producer that reports only failures (a
        transaction's commit is the report of the rest): if librdkafka reports
        it failed, ``(record, error)`` is appended to ``failures`` on the loop.
        No future and no callback for a success: at thousands of records a
        transaction, serving reports was most of the loop's cost of a record.
        Raises as ``produce`` does for a record refused at once."""
        if self._fatal is not None:
            raise self._fatal
        report = partial(self._report_failure, failures, record)
        await self._hand_over(
            record.topic, record.value, record.key, record.headers, record.partition, report
        )

    async def _hand_over(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        partition: int | None,
        report: Callable[[KafkaError | None, Message], None],
    ) -> None:
        # (the stub's header type has str values too, and list is invariant)
        headers_ = cast("list[tuple[str, str | bytes | None]]", headers)
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key, headers=headers_, on_delivery=report)
                else:
                    self._producer.produce(
                        topic, value, key, partition, headers=headers_, on_delivery=report
                    )
            except BufferError:
                # librdkafka's queue is full (queue.buffering.max.*): wait for
                # it to drain rather than grow without bound.
                await asyncio.sleep(_QUEUE_FULL_WAIT_S)
                continue
            return

    def _report_failure(
        self,
        failures: list[tuple[OutRecord, BaseException]],
        record: OutRecord,
        error: KafkaError | None,
        _: Message,
    ) -> None:
        # On a librdkafka thread; only failures come (delivery.report.only.error).
        # One loop call per failure: they are rare. No lock (see ``_report``).
        if error is None:
            return
        # (a closed loop raises RuntimeError: nobody is left to read it)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(failures.append, (record, KafkaException(error)))

    def _report(
        self, future: asyncio.Future[Delivered], error: KafkaError | None, message: Message
    ) -> None:
        # On a librdkafka thread (the poller, or one draining in flush or a
        # transaction call). One loop wake-up per batch of reports, and no
        # lock: when librdkafka fails fatally, the binding raises the error in
        # the thread that served it and then runs the callbacks queued behind
        # it with the exception still set, so any call here may raise
        # SystemError after it did its work. A lock taken that way was never
        # released: a test run hung with both threads waiting on it.
        self._reports.append((future, error, message))
        if not self._resolving:
            # (two threads may both schedule one: the second finds nothing)
            self._resolving = True
            with contextlib.suppress(RuntimeError):  # (the loop is closed)
                self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        # Cleared before taking: a report appended after this line schedules
        # another call; one appended before it is taken below.
        self._resolving = False
        reports = self._reports
        waiting = self._waiting
        while reports:
            future, error, message = reports.popleft()
            waiting.discard(future)
            if future.done():
                continue
            if error is None:
                future.set_result(
                    Delivered(
                        message.topic() or "", message.partition() or 0, message.offset() or 0
                    )
                )
            else:
                future.set_exception(KafkaException(error))

    def _poll(self) -> None:
        producer = self._producer
        while not self._stop.is_set():
            try:
                producer.poll(_POLL_S)
            except (KafkaException, SystemError) as exc:
                # A fatal error (fenced, idempotence state lost): the binding
                # raises it from the call that served it and reports nothing more.
                with contextlib.suppress(RuntimeError):  # (the loop is closed)
                    self._loop.call_soon_threadsafe(self._fail_all, _fatal(exc))
                return

    def _fail_all(self, error: KafkaException) -> None:
        # A fatal error (fenced, idempotence state lost): librdkafka reports
        # nothing more but failures, so every waiting record fails now.
        if self._fatal is not None:
            return
        log.error("the Kafka producer failed for good", extra={"error": str(error)})
        self._fatal = error
        self._resolve()  # reports already served come first
        waiting, self._waiting = self._waiting, set()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    def pending(self) -> int:
        """Records librdkafka holds that have no delivery report yet."""
        return len(self._producer)

    # --- transactions and flushing ---------------------------------------------

    async def _call(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return await self._loop.run_in_executor(self._calls, call, *args)
        except SystemError as exc:
            # (a fatal error, as the binding sometimes reports it: see ``_fatal``)
            fatal = _fatal(exc)
            self._fail_all(fatal)
            raise fatal from exc

    async def init_transactions(self, timeout_s: float) -> None:
        await self._call(self._producer.init_transactions, timeout_s)

    async def begin_transaction(self) -> None:
        # No network round trip, but librdkafka waits for its own main thread
        # to answer, which under load held the event loop (2% of its samples).
        await self._call(self._producer.begin_transaction)

    async def commit_transaction(self, timeout_s: float) -> None:
        await self._call(self._producer.commit_transaction, timeout_s)

    async def abort_transaction(self, timeout_s: float) -> None:
        await self._call(self._producer.abort_transaction, timeout_s)

    async def send_offsets_to_transaction(
        self, offsets: list[Any], group_metadata: Any, timeout_s: float
    ) -> None:
        await self._call(
            self._producer.send_offsets_to_transaction, offsets, group_metadata, timeout_s
        )

    async def flush(self, timeout_s: float) -> int:
        """Wait for every queued record's report; the number still without one."""
        return await self._call(self._producer.flush, timeout_s)

    async def list_topics(self, timeout_s: float) -> Any:
        return await self._call(self._producer.list_topics, None, timeout_s)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (bounded), stop the poller, release librdkafka."""
        if self._closed:
            return
        self._closed = True
        try:
            left = await self.flush(timeout_s)
            if left:
                log.warning(
                    "Kafka producer closed with records unreported", extra={"records": left}
                )
        finally:
            self._stop.set()
            await self._loop.run_in_executor(None, self._poller.join)
            self._calls.shutdown(wait=False, cancel_futures=True)
            self._resolve()


def _fatal(error: KafkaException | SystemError) -> KafkaException:
    """The producer's fatal error as librdkafka would name it. The binding
    raises a fatal error inside the call that drained it, and then runs the
    callbacks queued behind it with the exception still set: the call may then
    fail with "SystemError: ... returned NULL without setting an exception"
    instead (seen from flush when fenced). Either way the producer is past use."""
    if isinstance(error, KafkaException):
        return error
    return KafkaException(
        KafkaError(KafkaError._FATAL, f"the Kafka producer failed: {error}", fatal=True)
    )


def needs_abort(error: BaseException) -> bool:
    """A transaction call's failure after which the transaction must be aborted
    (and its records sent again in a new one)."""
    carried = kafka_error(error)
    return carried is not None and carried.txn_requires_abort()


def retriable(error: BaseException) -> bool:
    """A transaction call's failure that the same call may get past."""
    carried = kafka_error(error)
    return carried is not None and carried.retriable() and not carried.txn_requires_abort()
