"""The delivery loop with Kafka transactions (``kafka.transactions``, on by
default): exactly-once for consumers that read committed.

Records leave the queue in slices; each slice is one transaction:

1. **collect**: records until the queue is idle for ``linger_s`` (low load:
   a slice ends as soon as the sources pause), ``interval_s`` after the first
   one, or ``max_records``; never between two records of one unit (one
   envelope's event and state records: ``OutRecord.joined``);
2. **write** them all and wait for every delivery report;
3. **cover**: their ``on_written`` callbacks move their tasks' acknowledged
   positions, and ``covering()`` (the checkpointer) returns the checkpoints of
   exactly those positions, written into the same transaction;
4. **commit**: envelopes and checkpoints become visible together, or not at
   all; only then does ``on_delivered`` run for each record.

So a checkpoint never leads what is published (it commits with it) and never
lags it (each transaction carries the checkpoints of its own envelopes): the
next owner after a crash resumes exactly after the last committed envelope.

Failures, by the retry policy: a transaction that fails as a whole (a record
not accepted, the broker away, the coordinator aborting it) is aborted and
its records written again in a new one, after a back-off, for ever; a record
Kafka refuses for good is taken out and held (tried alone every
``held_retry_s``, nothing acknowledged past it), as in the plain loop; a
refusal of every send halts the loop until it passes; a fenced producer
(another process took this replica's ``transactional.id``) raises
``FencedError``: this replica is a zombie and must stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from bridge.core.record import OutRecord, mark_written
from bridge.core.retry import Backoff, RetryPolicy, Verdict
from bridge.errors import BridgeError, FencedError, TransactionAbortedError
from bridge.observability.metrics import Metrics, TransactionOutcome
from bridge.pipeline.delivery import _HELD_RETRY_S, DELIVERY_RETRY, DeliveryLoop, RecordSink

__all__ = ["TransactionalDelivery", "TransactionalSink"]

log = logging.getLogger(__name__)

#: the records ``on_written`` has covered: checkpoints to commit with them
Covering = Callable[[], list[OutRecord]]


class TransactionalSink(RecordSink, Protocol):
    def begin(self) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...

    async def reset(self) -> None:
        """A new producer in place of one whose transaction cannot be ended."""
        ...


#: failed aborts in a row after which the producer is replaced
_ABORTS_BEFORE_RESET = 3


class _Failed(Exception):
    """Some records of the transaction were not written: (record, error) pairs."""

    def __init__(self, failures: list[tuple[OutRecord | None, BridgeError]]) -> None:
        super().__init__(f"{len(failures)} failures")
        self.failures = failures


class TransactionalDelivery(DeliveryLoop):
    def __init__(  # noqa: PLR0913  (the cadence is three numbers)
        self,
        queue: asyncio.Queue[OutRecord],
        sink: TransactionalSink,
        metrics: Metrics,
        *,
        interval_s: float,
        max_records: int,
        linger_s: float,
        covering: Covering | None = None,
        retry: RetryPolicy = DELIVERY_RETRY,
        max_record_bytes: int | None = None,
        held_retry_s: float = _HELD_RETRY_S,
    ) -> None:
        super().__init__(
            queue,
            sink,
            metrics,
            retry=retry,
            max_record_bytes=max_record_bytes,
            held_retry_s=held_retry_s,
        )
        self._transactions = sink
        self._interval_s = interval_s
        self._max_records = max_records
        self._linger_s = linger_s
        self._covering = covering
        #: records Kafka refused for good, with when to try them again
        self._held_until: dict[OutRecord, float] = {}
        #: transactions committed
        self.committed = 0

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            await self._transact(batch)

    # --- collect ----------------------------------------------------------------

    def _take(self, record: OutRecord) -> OutRecord:
        if self._in_flight == 0:
            self._last_progress = self._loop.time()  # idle time is not a stall
        self._in_flight += 1
        self._idle.clear()
        return record

    def _due_held(self) -> list[OutRecord]:
        now = self._loop.time()
        due = [record for record, until in self._held_until.items() if until <= now]
        for record in due:
            del self._held_until[record]
        return due

    async def _collect(self) -> list[OutRecord]:
        queue = self._queue
        loop = self._loop
        batch = self._due_held()  # alone: a refused record must not sink a slice again
        if batch:
            return batch
        while not batch:
            wake = min(self._held_until.values(), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake):
                    batch.append(self._take(await queue.get()))
            if not batch:
                return self._due_held()
        closes = loop.time() + self._interval_s
        while len(batch) < self._max_records or batch[-1].joined:
            if not queue.empty():
                batch.append(self._take(queue.get_nowait()))
                continue
            if batch[-1].joined:  # the rest of the unit is on its way
                batch.append(self._take(await queue.get()))
                continue
            wait = min(self._linger_s, closes - loop.time())
            if wait <= 0:
                break
            try:
                async with asyncio.timeout(wait):
                    record = await queue.get()
            except TimeoutError:
                break
            batch.append(self._take(record))
        return batch

    # --- one transaction ------------------------------------------------------------

    async def _transact(self, records: list[OutRecord]) -> None:
        covered = False
        backoff = self._policy.backoff()
        while records:  # (empty when its only record was taken out and held)
            try:
                self._transactions.begin()
                await self._write_all(records)
                if not covered:
                    covered = True
                    for record in records:
                        mark_written(record)
                    extra = self._covering() if self._covering is not None else []
                    if extra:
                        # checkpoints are in flight like any record, so drain waits for them
                        self._in_flight += len(extra)
                        records = records + extra
                        await self._write_all(extra)
                await self._commit(backoff)
            except _Failed as failed:
                await self._abort(backoff)
                self._metrics.transactions(TransactionOutcome.ABORTED).inc()
                records = await self._sort_out(records, failed.failures, backoff)
                continue
            break
        if records:
            self.committed += 1
            self._metrics.transactions(TransactionOutcome.COMMITTED).inc()
        for record in records:
            self._delivered(record)

    async def _write_all(self, records: list[OutRecord]) -> None:
        failures: list[tuple[OutRecord | None, BridgeError]] = []
        futures: list[tuple[OutRecord, asyncio.Future[Any]]] = []
        for record in records:
            try:
                futures.append((record, await self._sink.write(record)))
            except BridgeError as exc:
                failures.append((record, exc))
                break  # the transaction is lost anyway: stop adding to it
        if futures:
            await asyncio.wait([future for _, future in futures])
        for record, future in futures:
            error = future.exception()
            if error is not None:
                failures.append((record, self._sink.classify(error)))
        if failures:
            raise _Failed(failures)

    async def _commit(self, backoff: Backoff) -> None:
        while True:
            try:
                await self._transactions.commit()
            except FencedError as exc:
                self._fenced(exc)
            except TransactionAbortedError as exc:
                raise _Failed([(None, exc)]) from exc
            except BridgeError as exc:
                # the same commit may go through: the transaction is still open
                self._note_failure(None, exc)
                await self._policy.wait(backoff)
                continue
            backoff.reset()
            return

    async def _abort(self, backoff: Backoff) -> None:
        failed = 0
        while True:
            try:
                if failed < _ABORTS_BEFORE_RESET:
                    await self._transactions.abort()
                else:
                    log.warning("the transaction cannot be aborted; replacing the Kafka producer")
                    await self._transactions.reset()
            except FencedError as exc:
                self._fenced(exc)
            except BridgeError as exc:
                failed += 1
                self._note_failure(None, exc)
                await self._policy.wait(backoff)
                continue
            return

    async def _sort_out(
        self,
        records: list[OutRecord],
        failures: list[tuple[OutRecord | None, BridgeError]],
        backoff: Backoff,
    ) -> list[OutRecord]:
        """After an abort: what to send again, and when."""
        for _, error in failures:
            if isinstance(error, FencedError):
                self._fenced(error)
        refused = {
            record
            for record, error in failures
            if record is not None
            and not record.written  # covered by a checkpoint in this transaction: never taken out
            and self._verdict(record, error) is Verdict.REJECT
        }
        halt = next((e for _, e in failures if self._policy.verdict(e) is Verdict.HALT), None)
        if refused:
            for record in refused:
                error = next(e for r, e in failures if r is record)
                self._hold(record, error)
            return [record for record in records if record not in refused]
        if halt is not None:
            self._halt(records[0], halt)
            await asyncio.sleep(self._held_retry_s)
            return records
        _, error = failures[0]
        self._note_failure(failures[0][0], error)
        await self._policy.wait(backoff)
        return records

    def _hold(self, record: OutRecord, error: BridgeError) -> None:
        # (still in flight: a drain at shutdown waits for it, as in the plain loop)
        self._refused_for_good(record, error)
        self._held_until[record] = self._loop.time() + self._held_retry_s

    def _fenced(self, error: FencedError) -> NoReturn:
        log.error(
            "the Kafka producer was fenced: another replica holds this transactional.id; "
            "this one stops (nothing it wrote after that can commit)",
            extra={"error": str(error)},
        )
        raise error
