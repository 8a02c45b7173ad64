"""The delivery loop with Kafka transactions (``kafka.transactions``, on by
default): exactly-once for consumers that read committed.

Records leave the queue in slices; each slice is one transaction:

1. **collect**: records until the queue is idle for ``linger_s`` (low load:
   a slice ends as soon as the sources pause), ``interval_s`` after the first
   one came in (under load, what queued during the previous commit goes at
   once), or ``max_records``; never between two records of one unit (one
   envelope's event and state records: ``OutRecord.joined``);
2. **write** them all and wait until librdkafka has them all delivered
   (``flush``): the producer reports only failures
   (``delivery.report.only.error``), so a record costs no future and no
   callback when it succeeds;
3. **cover**: their ``on_written`` callbacks move their tasks' acknowledged
   positions, and ``covering()`` (the checkpointer) returns the checkpoints of
   exactly those positions, written into the same transaction (not waited
   for: the commit flushes them, and fails if one failed); and the consumer
   offsets (``OffsetSource``) of the Kafka messages whose output it holds
   (reports), with the group metadata that proves this replica still holds
   its partitions (KIP-447: the broker refuses them from a generation the
   group has left, so a zombie's transaction cannot commit);
4. **commit**: envelopes and checkpoints become visible together, or not at
   all; only then does ``on_delivered`` run for each record.

Why the wait in 2, when the commit would fail anyway if an envelope failed:
a checkpoint must never reach the log before the envelopes it covers. A
broker that shows an aborted transaction to read_committed readers (tansu
does) would otherwise hand the next owner, after a crash, a checkpoint past
envelopes that were never written: a gap. Measured without the wait (steady
bench): p50 -20%, and a sequence gap in the single-replica SIGKILL test.

So a checkpoint never leads what is published (it commits with it) and never
lags it (each transaction carries the checkpoints of its own envelopes): the
next owner after a crash resumes exactly after the last committed envelope.

With ``kafka.transaction_pipeline`` a second producer (``partner``) lets
two transactions be in flight: the next slice is written while the one
before it commits, so a record waits for one transaction's round trips
rather than for the end of the one being committed and then its own. The
rules that keep order and exactly-once are on ``_next``. Off by default:
tansu, the embedded broker, shows read_committed readers nothing while any
transaction is open on a partition, and with two producers taking turns one
nearly always is (docs/notes/pipelined-transactions.md).

Failures, by the retry policy: a transaction that fails as a whole (a record
not accepted, the broker away, the coordinator aborting it) is aborted and
its records written again in a new one, after a back-off, for ever; a record
Kafka refuses for good is taken out and held (tried alone every
``held_retry_s``, nothing acknowledged past it), as in the plain loop; a
refusal of every send halts the loop until it passes; a fenced producer
(another process took this replica's ``transactional.id``), or offsets
refused because the group dropped this member, raise ``FencedError``: this
replica is a zombie and must stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from bridge.core.record import OutRecord, mark_written
from bridge.core.retry import Backoff, RetryPolicy, Verdict
from bridge.errors import (
    BridgeError,
    FencedError,
    GroupGenerationError,
    RequestTimeoutError,
    TransactionAbortedError,
)
from bridge.observability.metrics import Metrics, TransactionOutcome
from bridge.pipeline.delivery import _HELD_RETRY_S, DELIVERY_RETRY, DeliveryLoop, RecordSink

__all__ = ["TransactionalDelivery", "TransactionalSink"]

log = logging.getLogger(__name__)

#: the records ``on_written`` has covered: checkpoints to commit with them
Covering = Callable[[], list[OutRecord]]


class TransactionalSink(RecordSink, Protocol):
    async def begin(self) -> None: ...

    async def write_quiet(
        self, record: OutRecord, failures: list[tuple[OutRecord, BaseException]]
    ) -> None:
        """Hand the record over; only a failure is reported, into ``failures``
        (the commit says the rest were written)."""
        ...

    async def flush(self) -> int:
        """Until every record handed over has its answer: the number still without."""
        ...

    async def send_offsets(self, offsets: list[Any], group_metadata: Any) -> None:
        """Commit these consumer offsets with the open transaction."""
        ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...

    async def reset(self) -> None:
        """A new producer in place of one whose transaction cannot be ended."""
        ...


class OffsetSource(Protocol):
    """A consumer group member whose offsets commit with the transaction that
    carries the output of its messages (``PartitionedConsumer``), or that proves
    with them that it still holds its partitions (``Ownership``)."""

    @property
    def offsets_pending(self) -> asyncio.Event:
        """Set while offsets wait for a transaction even without records."""
        ...

    def take_offsets(self) -> list[Any]:
        """The offsets this transaction carries (taken once for it)."""
        ...

    def current(self, offsets: list[Any]) -> tuple[list[Any], Any] | None:
        """Of ``offsets``, those still to send, with the group metadata to send them with."""
        ...

    def offsets_committed(self, offsets: list[Any]) -> None: ...

    async def rejected(self) -> None:
        """The broker refused offsets sent with ``current()``'s metadata: read
        the group's state anew; raise ``FencedError`` if the group dropped this
        member (its partitions, and their work, belong to others now)."""
        ...


#: failed aborts in a row after which the producer is replaced. One: a new
#: producer with the same transactional id aborts the open transaction at its
#: InitProducerId, which is what a retried abort would do at best; waiting for
#: three (each up to kafka.request_timeout_ms, plus back-off) kept the bridge
#: unready for over 30 s after a broker outage on tansu, whose epoch bump after
#: a sequence gap never succeeds (librdkafka retried it all along).
_ABORTS_BEFORE_RESET = 1


class _Failed(Exception):
    """Some records of the transaction were not written: (record, error) pairs."""

    def __init__(self, failures: list[tuple[OutRecord | None, BridgeError]]) -> None:
        super().__init__(f"{len(failures)} failures")
        self.failures = failures


class _Transaction:
    """One slice of records and what its transaction carries, kept across the
    attempts to commit it (a redone transaction writes the same checkpoints and
    sends the same offsets)."""

    __slots__ = ("covered", "covering", "failures", "open", "records", "sent", "sink", "staged")

    def __init__(self, records: list[OutRecord], sink: TransactionalSink) -> None:
        self.records = records
        self.sink = sink
        #: ``_cover`` ran: the records are marked written and ``covering`` holds
        #: the checkpoints ``_cover`` added (among ``records`` from then on)
        self.covered = False
        self.covering: set[OutRecord] = set()
        #: the input offsets this transaction carries (taken once, sent again if redone)
        self.staged: list[tuple[OffsetSource, list[Any]]] = []
        self.sent: list[tuple[OffsetSource, list[Any]]] = []
        #: this attempt's records that Kafka reported failed
        self.failures: list[tuple[OutRecord, BaseException]] = []
        #: begun and not yet committed or aborted
        self.open = False


class _Ahead:
    """The transaction whose commit runs while the next one is written."""

    __slots__ = ("backoff", "task", "transaction")

    def __init__(
        self, transaction: _Transaction, task: asyncio.Task[None], backoff: Backoff
    ) -> None:
        self.transaction = transaction
        self.task = task
        self.backoff = backoff


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
        partner: TransactionalSink | None = None,
        covering: Covering | None = None,
        offsets: Callable[[], list[OffsetSource]] = list,
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
        #: the producers transactions take turns on: with a ``partner``, the
        #: next transaction is written while the one before it commits
        self._lanes: tuple[TransactionalSink, ...] = (sink,) if partner is None else (sink, partner)
        self._interval_s = interval_s
        self._max_records = max_records
        self._linger_s = linger_s
        self._covering = covering
        self._offsets = offsets
        #: records Kafka refused for good, with when to try them again
        self._held_until: dict[OutRecord, float] = {}
        #: transactions committed
        self.committed = 0
        #: transactions written while the one ahead of them committed
        self.overlapped = 0

    async def run(self) -> None:
        ahead: _Ahead | None = None
        try:
            while True:
                records = await self._collect(ahead.task if ahead is not None else None)
                # Without records, offsets may be pending only because the one
                # ahead has not taken them yet: they wait for it to commit.
                if ahead is not None and (ahead.task.done() or not records):
                    await self._settle(ahead, None)
                    ahead = None
                if not records and not self._offsets_pending():
                    continue
                ahead = await self._next(_Transaction(records, self._free_lane(ahead)), ahead)
        finally:
            if ahead is not None:
                ahead.task.cancel()
                if ahead.task.done() and not ahead.task.cancelled():
                    ahead.task.exception()  # (the loop's own error is the one raised)

    def _free_lane(self, ahead: _Ahead | None) -> TransactionalSink:
        """The producer without an open transaction (``ahead`` is on the other)."""
        lanes = self._lanes
        if ahead is None or ahead.transaction.sink is lanes[1]:
            return lanes[0]
        return lanes[1]

    async def _next(self, transaction: _Transaction, ahead: _Ahead | None) -> _Ahead | None:
        """Write ``transaction``, then commit it: on its own task when a second
        producer lets the next one be written meanwhile, else here.

        Two transactions in flight keep exactly-once and each task's order by
        three rules. Writes in order: a transaction is written only after the
        one before it was flushed (this runs after the previous call returned).
        Commits in order: its commit phase (marking its records written,
        checkpoints, offsets) starts only once the one ahead committed, so a
        task's checkpoints reach the log in order and a newer one is always the
        latest. An abort collapses the pipeline: if the one ahead aborts, this
        one (written after its first attempt) is aborted too and both are redone
        one after the other, else the redone records would follow this one's in
        their partitions. docs/notes/pipelined-transactions.md has the figures.
        """
        if len(self._lanes) == 1:  # (then nothing is ever ahead)
            await self._transact(transaction)
            return None
        failed: _Failed | None = None
        try:
            await self._write_phase(transaction)
        except _Failed as exc:
            failed = exc
        if ahead is not None:
            if not ahead.task.done():
                self.overlapped += 1
            if not await self._settle(ahead, transaction):
                await self._transact(_Transaction(transaction.records, transaction.sink))
                return None
        if failed is not None:
            await self._transact(transaction, failed)
            return None
        backoff = self._policy.backoff()
        task = self._loop.create_task(self._commit_and_finish(transaction, backoff))
        return _Ahead(transaction, task, backoff)

    async def _settle(self, ahead: _Ahead, behind: _Transaction | None) -> bool:
        """Until the transaction ahead committed; ``False`` if it failed: then
        ``behind`` (written after it) is aborted, and the one ahead redone alone."""
        try:
            await ahead.task
        except _Failed as failed:
            if behind is not None:
                await self._abort_attempt(behind, ahead.backoff)
            await self._transact(ahead.transaction, failed, ahead.backoff)
            return False
        return True

    def _offsets_pending(self) -> bool:
        return any(source.offsets_pending.is_set() for source in self._offsets())

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

    async def _collect(self, ahead: asyncio.Task[None] | None = None) -> list[OutRecord]:
        """The next slice; empty (and soon) if ``ahead`` ends while none has begun."""
        queue = self._queue
        loop = self._loop
        batch = self._due_held()  # alone: a refused record must not sink a slice again
        if batch:
            return batch
        while not batch:
            wake = min(self._held_until.values(), default=None)
            first = await self._first(wake, ahead)
            if first is None:  # a held record is due, input offsets wait alone, ``ahead`` ended
                return self._due_held()
            batch.append(self._take(first))
        # The window is counted from when the oldest record came in, not from
        # when this slice took it: under load, records queue while the previous
        # transaction commits, and waiting a whole interval more for them was
        # up to interval_s of latency added to every record (measured, steady
        # bench: ~20 ms of a ~70 ms cycle). A slice then takes what has queued
        # and commits at once; transactions still commit at most as often as
        # their own round trips allow.
        closes = min(batch[0].received_at, loop.time()) + self._interval_s
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

    async def _first(
        self, wake: float | None, ahead: asyncio.Task[None] | None
    ) -> OutRecord | None:
        """The next record, or ``None`` at ``wake``, when ``ahead`` ends (its
        failure must not wait for the next record), or when an input's offsets
        wait for a transaction with no record to ride with (a report that
        published nothing, the last ones before a stop)."""
        sources = self._offsets()
        if any(source.offsets_pending.is_set() for source in sources):
            return None
        getter = asyncio.ensure_future(self._queue.get())
        waiters: set[asyncio.Future[Any]] = {getter}
        waiters.update(asyncio.ensure_future(s.offsets_pending.wait()) for s in sources)
        if ahead is not None:
            waiters.add(ahead)
        try:
            timeout = None if wake is None else max(0.0, wake - self._loop.time())
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters - {getter, ahead}:
                waiter.cancel()
            if not getter.done():
                getter.cancel()  # (a cancelled Queue.get takes nothing)
        return getter.result() if getter.done() and not getter.cancelled() else None

    # --- one transaction ------------------------------------------------------------

    async def _transact(
        self,
        transaction: _Transaction,
        failed: _Failed | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Until ``transaction`` commits, one attempt after the other (after
        ``failed``, the attempt already made: abort it first)."""
        backoff = backoff or self._policy.backoff()
        while True:
            if failed is not None:
                await self._recover(transaction, failed, backoff)
                if transaction.covered and not transaction.records and not transaction.staged:
                    break  # what was left is held
            try:
                await self._write_phase(transaction)
                await self._commit_phase(transaction, backoff)
            except _Failed as exc:
                failed = exc
                continue
            break
        self._finish(transaction)

    async def _write_phase(self, transaction: _Transaction) -> None:
        """Begin, hand the records over and wait until Kafka has them all (the
        checkpoints of a redone transaction wait for the commit phase)."""
        sink = transaction.sink
        await sink.begin()
        transaction.open = True
        transaction.failures = []
        transaction.sent = []
        covering = transaction.covering
        await self._write_all(
            sink, [r for r in transaction.records if r not in covering], transaction.failures
        )

    async def _commit_phase(self, transaction: _Transaction, backoff: Backoff) -> None:
        """Cover the written records (once), then checkpoints, offsets, commit."""
        if not transaction.covered:
            transaction.covered = True
            extra, transaction.staged = self._cover(transaction.records, self._offsets())
            transaction.covering = set(extra)
            transaction.records = transaction.records + extra
        covering = transaction.covering
        # The covering checkpoints are not waited for here: the commit
        # flushes them and fails if one failed. Their round trip
        # overlaps the offsets' and the commit's instead of preceding
        # them (~20-30 ms of a ~70 ms transaction at 2,000 events/s).
        await self._send_all(
            transaction.sink,
            [r for r in transaction.records if r in covering],
            transaction.failures,
        )
        transaction.sent = await self._send_offsets(transaction.sink, transaction.staged)
        await self._commit(transaction.sink, backoff, transaction.failures)
        transaction.open = False

    async def _commit_and_finish(self, transaction: _Transaction, backoff: Backoff) -> None:
        await self._commit_phase(transaction, backoff)
        self._finish(transaction)

    async def _recover(self, transaction: _Transaction, failed: _Failed, backoff: Backoff) -> None:
        """Abort the failed attempt; sort out what to write again, and when."""
        await self._abort_attempt(transaction, backoff)
        transaction.records = await self._sort_out(transaction.records, failed.failures, backoff)

    async def _abort_attempt(self, transaction: _Transaction, backoff: Backoff) -> None:
        """Abort the transaction's open attempt (if begun), and count it."""
        if transaction.open:
            await self._abort(transaction.sink, backoff)
            transaction.open = False
            self._metrics.transactions(TransactionOutcome.ABORTED).inc()

    def _finish(self, transaction: _Transaction) -> None:
        """Committed: its records are delivered, its inputs' offsets committed."""
        if transaction.records or transaction.sent:
            self.committed += 1
            self._metrics.transactions(TransactionOutcome.COMMITTED).inc()
        for source, offsets in transaction.sent:
            source.offsets_committed(offsets)
        for record in transaction.records:
            self._delivered(record)

    def _cover(
        self, records: list[OutRecord], sources: list[OffsetSource]
    ) -> tuple[list[OutRecord], list[tuple[OffsetSource, list[Any]]]]:
        """The records are written: their tasks' positions move, and what must
        commit with them comes back: the checkpoints covering them, and the
        offsets of the inputs whose output they are."""
        for record in records:
            mark_written(record)
        extra = self._covering() if self._covering is not None else []
        # checkpoints are in flight like any record, so a drain waits for them
        self._in_flight += len(extra)
        staged = [(source, offsets) for source in sources if (offsets := source.take_offsets())]
        return extra, staged

    async def _send_offsets(
        self, sink: TransactionalSink, staged: list[tuple[OffsetSource, list[Any]]]
    ) -> list[tuple[OffsetSource, list[Any]]]:
        """Each group's staged offsets into the open transaction, with the
        group's metadata of now (a redone transaction may follow a rebalance)."""
        sent = []
        for source, offsets in staged:
            sending = source.current(offsets)
            if sending is None:
                continue
            try:
                await sink.send_offsets(*sending)
            except FencedError as exc:
                self._fenced(exc)
            except GroupGenerationError as exc:
                self._note_failure(None, exc)
                try:
                    await source.rejected()
                except FencedError as fenced:
                    # a zombie: nothing of this transaction may become visible
                    with contextlib.suppress(BridgeError):
                        await sink.abort()
                    self._fenced(fenced)
                raise _Failed([(None, exc)]) from exc
            except BridgeError as exc:
                raise _Failed([(None, exc)]) from exc
            sent.append((source, sending[0]))
        return sent

    async def _write_all(
        self,
        sink: TransactionalSink,
        records: list[OutRecord],
        failures: list[tuple[OutRecord, BaseException]],
    ) -> None:
        """Hand the records over and wait until Kafka has them all (or named
        the ones that failed, in ``failures``): raises ``_Failed`` otherwise."""
        await self._send_all(sink, records, failures)
        if not records:
            return
        try:
            unanswered = await sink.flush()
        except BridgeError as exc:
            raise _Failed([*self._named(failures), (None, exc)]) from exc
        if failures:
            raise _Failed(self._named(failures))
        if unanswered:
            raise _Failed([(None, RequestTimeoutError(f"{unanswered} records unanswered"))])

    async def _send_all(
        self,
        sink: TransactionalSink,
        records: list[OutRecord],
        failures: list[tuple[OutRecord, BaseException]],
    ) -> None:
        """Hand the records to the producer, which reports only failures (into
        ``failures``). Raises ``_Failed`` if one cannot even be handed over."""
        for record in records:
            try:
                await sink.write_quiet(record, failures)
            except BridgeError as exc:
                # the transaction is lost anyway: stop adding to it
                raise _Failed([*self._named(failures), (record, exc)]) from exc

    def _named(
        self, failures: list[tuple[OutRecord, BaseException]]
    ) -> list[tuple[OutRecord | None, BridgeError]]:
        return [(record, self._sink.classify(error)) for record, error in failures]

    async def _commit(
        self,
        sink: TransactionalSink,
        backoff: Backoff,
        failures: list[tuple[OutRecord, BaseException]],
    ) -> None:
        """Commit: librdkafka flushes the transaction's records first, and fails
        the commit if one of them failed (``failures`` then names it, its
        report having reached the loop before the commit's answer)."""
        while True:
            try:
                await sink.commit()
            except FencedError as exc:
                self._fenced(exc)
            except TransactionAbortedError as exc:
                raise _Failed(self._named(failures) or [(None, exc)]) from exc
            except BridgeError as exc:
                # the same commit may go through: the transaction is still open
                self._note_failure(None, exc)
                await self._policy.wait(backoff)
                continue
            backoff.reset()
            return

    async def _abort(self, sink: TransactionalSink, backoff: Backoff) -> None:
        failed = 0
        while True:
            try:
                if failed < _ABORTS_BEFORE_RESET:
                    await sink.abort()
                else:
                    log.warning("the transaction cannot be aborted; replacing the Kafka producer")
                    await sink.reset()
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
            "this replica is fenced: another holds its transactional.id, or its group "
            "moved its partitions to others; it stops (nothing it wrote since can commit)",
            extra={"error": str(error)},
        )
        raise error
