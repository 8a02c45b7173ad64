"""The delivery loop: records from the bounded queue into the sink, acks back.

For each record: ``sink.write`` (waits while the producer's buffer is full,
which is the back-pressure), then the broker's answer decides, through the
retry policy, one of three outcomes:

- **delivered**: the record's ``on_delivered`` runs (its task's checkpoint or
  its input offset may move over it);
- **retried** (timeouts, the broker away, a batch refused as too large for a
  record that is small): sent again after a full-jitter back-off, for ever:
  a retry is not a drop, and an outage of any length ends with every record
  delivered;
- **held** (Kafka refuses this record for good: over the broker's size limit
  even truncated, malformed): not acknowledged, so nothing moves past it;
  counted (``records_held``), logged, readiness fails, and it is tried again
  every ``_HELD_RETRY_S`` in case the broker's limits change;
- **halted** (Kafka refuses every send: authorization, a setting): the loop
  stops taking records from the queue, so memory stays bounded by the queue,
  readiness fails, and the refused record is retried slowly until it passes.

``drain()`` is the second stage of shutdown: once the sources have stopped,
wait until the queue is empty and no record is in flight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Protocol

from bridge.core.record import OutRecord, acknowledge
from bridge.core.retry import RetryPolicy, Verdict
from bridge.errors import BridgeError, FencedError, RecordTooLargeError, RequestTimeoutError
from bridge.observability.metrics import Metrics, PublishErrorReason

__all__ = ["DeliveryLoop", "RecordSink"]

log = logging.getLogger(__name__)


#: Failed sends are retried without expiry, backing off to 10 s.
DELIVERY_RETRY = RetryPolicy(0.2, 10.0)
#: A record Kafka refuses for good (or every send, while halted) is tried again this often.
_HELD_RETRY_S = 30.0


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
        max_record_bytes: int | None = None,
        held_retry_s: float = _HELD_RETRY_S,
    ) -> None:
        self._queue = queue
        self._sink = sink
        self._metrics = metrics
        self._policy = retry
        #: a too-large refusal for a record under half of this was the batch's
        self._small = (max_record_bytes or 0) // 2
        self._held_retry_s = held_retry_s
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: set while records may be taken from the queue (cleared while halted)
        self._open = asyncio.Event()
        self._open.set()
        self._loop = asyncio.get_running_loop()
        self._retries: set[asyncio.Task[None]] = set()
        #: records Kafka refuses for good, waiting for their next try
        self._held: set[OutRecord] = set()
        self._published = metrics.envelopes_published
        self._failing = False
        #: the producer failed for good (fenced, or a fatal idempotence error):
        #: ``run`` raises it, and the bridge stops rather than hold every record
        self._fatal: FencedError | None = None
        self._runner: asyncio.Task[Any] | None = None
        #: records acknowledged by Kafka
        self.delivered = 0
        self._last_progress = self._loop.time()

    @property
    def healthy(self) -> bool:
        """Sends succeed, nothing is held and the loop is not halted (readiness)."""
        return not self._failing and not self._held and self._open.is_set()

    @property
    def halted(self) -> bool:
        return not self._open.is_set()

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stalled(self, threshold_s: float) -> bool:
        """Records wait and nothing was acknowledged for ``threshold_s``: the broker
        is away even if no send has failed yet (an idempotent producer retries
        inside the client and reports nothing until it succeeds)."""
        return self._in_flight > 0 and self._loop.time() - self._last_progress > threshold_s

    async def run(self) -> None:
        """Forever: take a record, write it. Cancel to stop (after ``drain``).
        Raises ``FencedError`` when the producer failed for good."""
        self._runner = asyncio.current_task()
        try:
            await self._run()
        except asyncio.CancelledError:
            if self._fatal is not None:  # cancelled by ``_refused``, not by a stop
                raise self._fatal from None
            raise

    async def _run(self) -> None:
        queue = self._queue
        while True:
            # (queue_depth is sampled once a second by the readiness watcher,
            # not set per record)
            await self._open.wait()  # halted: the queue fills, the streams wait
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
            except BridgeError as exc:
                if self._verdict(record, exc) is Verdict.RETRY:
                    # The producer could not even take it (no metadata, not
                    # connected): wait here, which holds the whole queue back.
                    self._note_failure(record, exc)
                    backoff = backoff or self._policy.backoff()
                    await self._policy.wait(backoff)
                    continue
                self._refused(record, exc)
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
        if self._verdict(record, translated) is Verdict.RETRY:
            self._note_failure(record, translated)
            self._later(record, None)
        else:
            self._refused(record, translated)

    def _verdict(self, record: OutRecord, error: BridgeError) -> Verdict:
        verdict = self._policy.verdict(error)
        if isinstance(error, RecordTooLargeError) and len(record.value or b"") < self._small:
            return Verdict.RETRY  # the batch it was in was refused, not the record itself
        return verdict

    def _refused(self, record: OutRecord, error: BridgeError) -> None:
        """Kafka refuses this record (held) or every send (halted): nothing is
        acknowledged, so no checkpoint or offset moves past it."""
        if isinstance(error, FencedError):
            log.error(
                "the Kafka producer failed for good; the bridge stops", extra={"error": str(error)}
            )
            self._fatal = error
            if self._runner is not None:
                self._runner.cancel()  # ``run`` turns it into this error
            return
        if self._policy.verdict(error) is Verdict.HALT:
            self._halt(record, error)
        else:
            self._refused_for_good(record, error)
        self._later(record, self._held_retry_s)

    def _halt(self, record: OutRecord, error: BridgeError) -> None:
        self._metrics.publish_errors(PublishErrorReason.REFUSED).inc()
        if self._open.is_set():
            log.error(
                "Kafka refuses the bridge's sends: delivery HALTED (nothing is dropped; "
                "it resumes by itself once Kafka accepts them)",
                extra={"topic": record.topic, "error": str(error)},
            )
        self._open.clear()

    def _refused_for_good(self, record: OutRecord, error: BridgeError) -> None:
        too_large = isinstance(error, RecordTooLargeError)
        reason = PublishErrorReason.TOO_LARGE if too_large else PublishErrorReason.REFUSED
        self._metrics.publish_errors(reason).inc()
        self._held.add(record)
        log.error(
            "Kafka refuses a record for good: it is held, and its task's checkpoint "
            "waits on it; if too large, lower kafka.max_request_bytes to the broker's "
            "message.max.bytes",
            extra={
                "topic": record.topic,
                "bytes": len(record.value or b""),
                "error": str(error),
            },
        )
        self._metrics.records_held.set(len(self._held))

    def _later(self, record: OutRecord, delay_s: float | None) -> None:
        task = self._loop.create_task(self._retry(record, delay_s))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, record: OutRecord, delay_s: float | None) -> None:
        record.attempts += 1
        if delay_s is None:
            # Resume the curve where this record is, so a long outage backs off to the cap.
            await self._policy.wait(self._policy.backoff(attempt=min(record.attempts, 16)))
        else:
            await asyncio.sleep(delay_s)
        await self._write(record)

    def _delivered(self, record: OutRecord) -> None:
        self._failing = False
        if self._held and record in self._held:
            self._held.discard(record)
            self._metrics.records_held.set(len(self._held))
        if not self._open.is_set():
            log.warning("Kafka accepts the bridge's sends again: delivery resumed")
            self._open.set()
        metrics = self._metrics
        if record.dead_letter_reason is not None:
            metrics.dead_letters(record.dead_letter_reason).inc()
        else:
            self._published(record.topic, record.event_type).inc()
            metrics.publish_latency.observe(self._loop.time() - record.received_at)
        acknowledge(record)
        self._finish_one()

    def _note_failure(self, record: OutRecord | None, error: BaseException) -> None:
        if not self._failing:
            log.warning(
                "Kafka send failed; retrying until it succeeds",
                extra={"topic": record.topic if record else None, "error": str(error)},
            )
        self._failing = True
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
