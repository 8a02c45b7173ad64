"""The delivery loop: records from the bounded queue into the sink, acks back.

For each record: ``sink.write`` (waits while the producer's buffer is full,
which is the back-pressure), then on the broker's answer either the record's
``on_delivered`` runs (success) or the record is sent again after a full-jitter
back-off, for ever: a retry is not a drop, and an outage of any length ends
with every record delivered. A record the broker will never take (over the
size limit even after truncation) is the one exception: it is given up, with
an error log line and ``dead_letters_total{reason="undeliverable"}``, and is
written nowhere (its ack still runs, so a checkpoint moves past it).

``drain()`` is the second stage of shutdown: once the sources have stopped,
wait until the queue is empty and no record is in flight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Protocol

from bridge.core.record import OutRecord
from bridge.core.retry import RetryPolicy
from bridge.errors import BridgeError, RecordTooLargeError, RequestTimeoutError, RetryableError
from bridge.observability.metrics import DeadLetterReason, Metrics, PublishErrorReason

__all__ = ["DeliveryLoop", "RecordSink"]

log = logging.getLogger(__name__)


#: Failed sends are retried without expiry, backing off to 10 s.
DELIVERY_RETRY = RetryPolicy(0.2, 10.0)


class RecordSink(Protocol):
    """What the loop needs of a sink (``bridge.sinks.kafka.KafkaSink``)."""

    async def write(self, record: OutRecord) -> asyncio.Future[Any]:
        """Hand one record over; the future resolves on the broker's answer."""
        ...

    def classify(self, error: BaseException) -> BridgeError:
        """A failed future's error as a bridge error (the sink's client's, translated)."""
        ...


class DeliveryLoop:
    """Consumes the queue; tracks every record until the broker acknowledged it."""

    def __init__(
        self,
        queue: asyncio.Queue[OutRecord],
        sink: RecordSink,
        metrics: Metrics,
        *,
        retry: RetryPolicy = DELIVERY_RETRY,
    ) -> None:
        self._queue = queue
        self._sink = sink
        self._metrics = metrics
        self._policy = retry
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._retries: set[asyncio.Task[None]] = set()
        self._published = metrics.envelopes_published
        #: False while sends fail; readiness reads it
        self.healthy = True
        #: records acknowledged (or, for the undeliverable, given up on with a log line)
        self.delivered = 0
        self._last_progress = self._loop.time()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stalled(self, threshold_s: float) -> bool:
        """Records wait and nothing was acknowledged for ``threshold_s``: the broker
        is away even if no send has failed yet (an idempotent producer retries
        inside the client and reports nothing until it succeeds)."""
        return self._in_flight > 0 and self._loop.time() - self._last_progress > threshold_s

    async def run(self) -> None:
        """Forever: take a record, write it. Cancel to stop (after ``drain``)."""
        queue = self._queue
        while True:
            # (queue_depth is sampled once a second by the readiness watcher,
            # not set per record)
            record = await queue.get()
            if self._in_flight == 0:
                self._last_progress = self._loop.time()  # idle time is not a stall
            self._in_flight += 1
            self._idle.clear()
            await self._write(record)

    async def drain(self) -> None:
        """Return when the queue is empty and every record was acknowledged."""
        while True:
            await self._idle.wait()
            if self._queue.empty() and self._in_flight == 0:
                return
            await asyncio.sleep(0.01)

    async def _write(self, record: OutRecord) -> None:
        backoff = None
        while True:
            try:
                future = await self._sink.write(record)
            except RetryableError as exc:
                # The producer could not even take it (no metadata, not
                # connected): wait here, which holds the whole queue back.
                self._note_failure(record, exc)
                backoff = backoff or self._policy.backoff()
                await self._policy.wait(backoff)
                continue
            except RecordTooLargeError as exc:
                self._give_up(record, exc)
                return
            future.add_done_callback(functools.partial(self._on_result, record))
            return

    def _on_result(self, record: OutRecord, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = future.exception()
        if error is None:
            self._delivered(record)
            return
        translated = error if isinstance(error, BridgeError) else self._sink.classify(error)
        if isinstance(translated, RecordTooLargeError):
            self._give_up(record, translated)
            return
        self._note_failure(record, translated)
        task = self._loop.create_task(self._retry(record))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, record: OutRecord) -> None:
        record.attempts += 1
        # Resume the curve where this record is, so a long outage backs off to the cap.
        await self._policy.wait(self._policy.backoff(attempt=min(record.attempts, 16)))
        await self._write(record)

    def _delivered(self, record: OutRecord) -> None:
        self.healthy = True
        metrics = self._metrics
        if record.dead_letter_reason is not None:
            metrics.dead_letters(record.dead_letter_reason).inc()
        else:
            self._published(record.topic, record.event_type).inc()
            metrics.publish_latency.observe(self._loop.time() - record.received_at)
        if record.on_delivered is not None:
            record.on_delivered(record)
        self._finish_one()

    def _give_up(self, record: OutRecord, error: BaseException) -> None:
        # Reached only when even a truncated envelope or a DLQ part is refused:
        # the broker's limit is below kafka.max_request_bytes. Said loudly.
        self._metrics.publish_errors(PublishErrorReason.TOO_LARGE).inc()
        self._metrics.dead_letters(DeadLetterReason.UNDELIVERABLE).inc()
        log.error(
            "record refused by the broker as too large; lower kafka.max_request_bytes "
            "to the broker's message.max.bytes",
            extra={"topic": record.topic, "bytes": len(record.value or b""), "error": str(error)},
        )
        if record.on_delivered is not None:
            record.on_delivered(record)
        self._finish_one()

    def _note_failure(self, record: OutRecord, error: BaseException) -> None:
        if self.healthy:
            log.warning(
                "Kafka send failed; retrying until it succeeds",
                extra={"topic": record.topic, "error": str(error)},
            )
        self.healthy = False
        reason = (
            PublishErrorReason.TIMEOUT
            if isinstance(error, RequestTimeoutError)
            else PublishErrorReason.UNAVAILABLE
        )
        self._metrics.publish_errors(reason).inc()

    def _finish_one(self) -> None:
        self._last_progress = self._loop.time()
        self.delivered += 1
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
