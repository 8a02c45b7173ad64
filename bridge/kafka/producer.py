"""An asyncio face on librdkafka's producer.

``produce`` hands a record to librdkafka (never blocks: a full local queue is
waited out here, which is the back-pressure) and returns a future that
resolves with librdkafka's delivery report. Delivery reports are served by
one thread that polls the producer; it hands them to the event loop in
batches (one wake-up per poll, not per record). Transaction calls block on
the network, so they run on one worker thread of their own, one at a time.

confluent-kafka's ``AIOProducer`` is not used: it refuses headers (the
CloudEvents binding needs them) and adds a second buffer in front of
librdkafka's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.core.record import Headers
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
        self._reports: list[tuple[asyncio.Future[Delivered], KafkaError | None, Message]] = []
        self._reports_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()
        #: transaction calls, one at a time, off the event loop
        self._calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-txn")
        self._closed = False
        #: futures without a delivery report yet (failed at once if the producer dies)
        self._waiting: set[asyncio.Future[Delivered]] = set()
        #: the fatal error that ended the producer (fenced, broken idempotence)
        self._fatal: KafkaException | None = None

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
        future: asyncio.Future[Delivered] = self._loop.create_future()
        # Taken out when its report is served (``_resolve``), not by a done
        # callback: that was one more loop callback per record, ~15% of the
        # cost of serving reports at 5,000 records a transaction.
        self._waiting.add(future)

        def report(error: KafkaError | None, message: Message) -> None:
            self._report(future, error, message)

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
            return future

    def _report(
        self, future: asyncio.Future[Delivered], error: KafkaError | None, message: Message
    ) -> None:
        # On a librdkafka thread (the poller, or one flushing in a transaction call).
        with self._reports_lock:
            first = not self._reports
            self._reports.append((future, error, message))
        if first:
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        with self._reports_lock:
            reports, self._reports = self._reports, []
        waiting = self._waiting
        for future, error, message in reports:
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
            except KafkaException as exc:
                # A fatal error (fenced, idempotence state lost): librdkafka
                # raises it from poll and will report nothing more.
                log.error("the Kafka producer failed for good", extra={"error": str(exc)})
                self._loop.call_soon_threadsafe(self._fail_all, exc)
                return

    def _fail_all(self, error: KafkaException) -> None:
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
        return await self._loop.run_in_executor(self._calls, call, *args)

    async def init_transactions(self, timeout_s: float) -> None:
        await self._call(self._producer.init_transactions, timeout_s)

    def begin_transaction(self) -> None:
        self._producer.begin_transaction()  # local: no network round trip

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
            self._calls.shutdown(wait=False)
            self._resolve()


def needs_abort(error: BaseException) -> bool:
    """A transaction call's failure after which the transaction must be aborted
    (and its records sent again in a new one)."""
    carried = kafka_error(error)
    return carried is not None and carried.txn_requires_abort()


def retriable(error: BaseException) -> bool:
    """A transaction call's failure that the same call may get past."""
    carried = kafka_error(error)
    return carried is not None and carried.retriable() and not carried.txn_requires_abort()
