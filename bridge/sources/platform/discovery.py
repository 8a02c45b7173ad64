"""The reconcile loop: list the tasks of every configured agent and user, follow
the non-terminal ones.

Each agent's (and user's) listing is its own thing: it is fetched beside the
others (at most ``discovery.max_concurrent_listings`` at once), and when it
fails it backs off and recovers on its own, through the retry policy
(honouring ``Retry-After``). One agent id the platform answers 404 (a typo, a
deleted agent) or that never answers (bounded by the request timeout) never
delays the others: it is counted (``listing_errors_total{owner,reason}``,
``listing_failing{owner}``), logged with what the platform answered, and
named in the platform's readiness detail. Readiness fails only when every
listing fails, or the platform refuses the key (401/403).

Two kinds of listing, so the cost follows the live tasks, not the history:
every ``discovery.interval_s`` a *live* listing asks only for the non-terminal
statuses (one request each: the platform's ``status`` filter takes one value;
the interval stretches so all listings together stay within
``discovery.max_listing_requests_per_s``), and a *full* listing asks for every
task. The first listing, and the one after a wake, is full. The next full one
comes no sooner than ``discovery.full_interval_s`` and no later than
``discovery.full_interval_max_s``; in between, once the live listings since
the last full one have listed as many tasks as it did (each counted as at
least ``_LIVE_ITEMS_FLOOR``, what a request costs anyway): full listings then
cost at most what live ones do, however long the history.

A listing's first success is its baseline: tasks already terminal then are
history and are not published. A task that appears in a later full listing
already terminal, unseen by any listing before, started and ended in between
(too fast for the live listings); its end is still published (from a resync),
so no terminal state is missed: it comes at most ``full_interval_max_s`` late.
Each listing remembers the ids it saw since its last full listing, so a
listing that failed for a while does not make its tasks look new. With several
replicas, ``Claims`` says which tasks are this replica's and where each stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.config import DiscoveryConfig
from bridge.core.retry import Backoff, RetryPolicy
from bridge.errors import (
    AuthError,
    BridgeError,
    InvalidDataError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
)
from bridge.observability.metrics import ListingError
from bridge.sources.platform.context import AllTasks, Claims, WorkerContext
from bridge.sources.platform.supervisor import TaskSupervisor
from bridge.wire import TERMINAL_STATUSES

__all__ = ["LIVE_STATUSES", "Discovery", "listing_error"]

log = logging.getLogger(__name__)

#: listing items handled between two yields to the event loop
_YIELD_EVERY = 256
#: the longest wait between two attempts of a failing listing
_MAX_BACKOFF_S = 60.0
#: the least a live listing counts toward the next full one, in tasks: an empty
#: live listing is three requests, about what listing 100 tasks costs
_LIVE_ITEMS_FLOOR = 100

#: (owner, status filter or ``None`` for every task) -> the listing
Fetch = Callable[[str, str | None], Awaitable[list[dict[str, Any]]]]

#: The non-terminal statuses a live listing asks for, one request each, in the
#: order a task goes through them: a task that moves on between two of these
#: requests (pending, then executing) is still caught by the later one.
LIVE_STATUSES: tuple[str, ...] = ("pending", "executing", "paused")


#: the first matching class names the reason (order matters: subclasses first)
_REASONS: tuple[tuple[type[BridgeError], ListingError], ...] = (
    (NotFoundError, ListingError.NOT_FOUND),
    (AuthError, ListingError.AUTH),
    (RateLimitedError, ListingError.RATE_LIMITED),
    (RequestTimeoutError, ListingError.TIMEOUT),
    (InvalidDataError, ListingError.INVALID),
)


def listing_error(error: BridgeError) -> ListingError:
    """The metric reason for a failed listing."""
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    if not error.retryable:
        return ListingError.REJECTED
    return ListingError.SERVER_ERROR if (error.status or 0) >= 500 else ListingError.NETWORK


@dataclass(eq=False)
class _Listing:
    """One agent's (or user's) listing, and how it has been going."""

    owner: str
    fetch: Fetch
    backoff: Backoff
    #: ids in its last full listing and the live ones since (``None``: the baseline comes)
    seen: set[str] | None = None
    #: the next listing is a full one, whatever the times (a wake, a failed full one)
    full_now: bool = False
    #: loop times: before the first, no full listing; from the second, one is due
    full_due: float = 0.0
    full_latest: float = 0.0
    #: tasks in its last full listing, and those its live listings listed since
    #: (each counted as at least ``_LIVE_ITEMS_FLOOR``)
    full_items: int = 0
    live_items: int = 0
    full_listings: int = 0
    #: loop time before which it is not tried again (backing off)
    not_before: float = 0.0
    #: what the platform answered last, while it fails
    failure: str | None = None
    failures: int = 0
    successes: int = 0
    live_unowned: set[str] = field(default_factory=set)
    #: set to list this one at once
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Discovery:
    def __init__(
        self,
        context: WorkerContext,
        supervisor: TaskSupervisor,
        config: DiscoveryConfig,
        *,
        claims: Claims | None = None,
        wake: asyncio.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        client = context.client
        self._supervisor = supervisor
        self._config = config
        self._health = context.health
        self._metrics = context.metrics
        self._claims: Claims = claims if claims is not None else AllTasks()
        self._rng = rng or random.Random()
        owners = len(config.agent_ids) + len(config.user_ids)
        #: interval_s, stretched to keep every live listing within the request budget
        self.live_interval_s = max(
            config.interval_s, len(LIVE_STATUSES) * owners / config.max_listing_requests_per_s
        )
        self._retry = RetryPolicy(self.live_interval_s, max(self.live_interval_s, _MAX_BACKOFF_S))
        #: set to list at once (this replica was just given partitions)
        self._wake = wake if wake is not None else asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_concurrent_listings)
        self._listings = [
            _Listing(agent, client.list_agent_tasks, self._retry.backoff())
            for agent in config.agent_ids
        ] + [
            _Listing(user, client.list_user_tasks, self._retry.backoff())
            for user in config.user_ids
        ]

    @property
    def rounds(self) -> int:
        """How many times every listing has succeeded, at least."""
        return min((listing.successes for listing in self._listings), default=0)

    async def run(self) -> None:
        """One loop per listing, so a slow or failing one holds up no other."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._relay_wakes())
            for listing in self._listings:
                group.create_task(self._keep_listing(listing))

    def wake(self) -> None:
        """List now (e.g. this replica was just given partitions)."""
        self._wake.set()

    def hinted(self, item: dict[str, Any]) -> bool:
        """A task known before any listing shows it (the bridge created it):
        considered at once, as a listing item would be; ``True`` when it is
        followed now. Ownership, checkpoints and tasks already followed are
        respected exactly as for a listed task."""
        task_id = item.get("id")
        if not isinstance(task_id, str) or self._supervisor.is_known(task_id):
            return False
        self._consider(task_id, item, None, set(), set())
        return self._supervisor.is_known(task_id)

    @property
    def full_rounds(self) -> int:
        """How many times every listing has been fully listed, at least."""
        return min((listing.full_listings for listing in self._listings), default=0)

    async def reconcile(self, *, full: bool = True) -> None:
        """One round: every listing not backing off, side by side; follow what is
        new. ``full=False`` lists live tasks only where no full listing is due."""
        now = asyncio.get_running_loop().time()
        due = [listing for listing in self._listings if listing.not_before <= now]
        await asyncio.gather(*(self._list_one(listing, full=full) for listing in due))
        self._report()

    async def _keep_listing(self, listing: _Listing) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before listing, not after: a wake that comes while it
            # runs (partitions just assigned) must bring the next listing.
            listing.wake.clear()
            started = loop.time()
            await self._list_one(listing, full=False)
            self._report()
            # At a fixed rate: the listing's own time (three requests to a busy
            # platform) is part of the interval, not added to it.
            now = loop.time()
            delay = max(
                self._interval(self.live_interval_s) - (now - started), listing.not_before - now
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await listing.wake.wait()

    async def _relay_wakes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for listing in self._listings:
                # Partitions just came here: their tasks that ended while
                # nobody owned them show only in a full listing.
                listing.not_before = 0.0
                listing.full_now = True
                listing.wake.set()

    def _full_due(self, listing: _Listing, now: float) -> bool:
        if listing.seen is None or listing.full_now:
            return True
        if now < listing.full_due:
            return False
        if self._config.full_listing_interval_s <= self.live_interval_s:
            return True  # configured so: every listing full, whatever it costs
        # Full listings cost no more than the live ones since, up to the latest.
        return listing.live_items >= listing.full_items or now >= listing.full_latest

    async def _list_one(self, listing: _Listing, *, full: bool) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        full = full or self._full_due(listing, now)
        if full:
            # Set before listing: a wake that comes meanwhile (due now) stands.
            listing.full_now = False
            listing.full_due = now + self._interval(self._config.full_listing_interval_s)
            listing.full_latest = now + self._interval(self._config.full_interval_max_s)
        try:
            async with self._slots:
                if full:
                    items = await listing.fetch(listing.owner, None)
                else:
                    items = []
                    for status in LIVE_STATUSES:
                        items += await listing.fetch(listing.owner, status)
        except BridgeError as exc:
            if full:
                listing.full_now = True  # still due
            self._failed(listing, exc)
            return
        if full:
            listing.full_listings += 1
            listing.full_items = len(items)
            listing.live_items = 0
        else:
            listing.live_items += max(len(items), _LIVE_ITEMS_FLOOR)
        if listing.failure is not None:
            log.info("task listing recovered", extra={"owner": listing.owner})
        listing.failure = None
        listing.failures = 0
        listing.successes += 1
        listing.backoff.reset()
        listing.not_before = 0.0
        await self._process(listing, items, full=full)

    async def _process(self, listing: _Listing, items: list[dict[str, Any]], *, full: bool) -> None:
        """Follow what is new in one listing. Each listing is processed and
        dropped before the next: a full listing holds every task of an agent,
        history included, and holding all at once was the largest allocation."""
        previous = listing.seen
        current: set[str] = set()
        live_unowned: set[str] = set()
        for index, item in enumerate(items):
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                # Thousands of new tasks start thousands of workers: done in
                # one go, that held the loop ~90 ms per 3,300 tasks.
                await asyncio.sleep(0)
            task_id = item.get("id")
            # (an empty id, or dots only, names no task: no URL can hold it, and
            # no envelope may carry it)
            if isinstance(task_id, str) and task_id.strip("."):
                current.add(task_id)
                self._consider(task_id, item, previous, listing.live_unowned, live_unowned)
        if not full:
            # A live listing lacks the ended tasks: keep what was seen until
            # the next full listing says which are still there.
            assert previous is not None  # the first listing is full
            previous |= current
            listing.live_unowned |= live_unowned
            return
        listing.seen = current
        # Keep the tasks still listed: a task seen running stays a candidate.
        listing.live_unowned = (listing.live_unowned & current) | live_unowned

    def _failed(self, listing: _Listing, error: BridgeError) -> None:
        reason = listing_error(error)
        listing.failures += 1
        listing.failure = str(error)
        delay = max(
            self._interval(self.live_interval_s),
            listing.backoff.next_delay(self._retry.hint(error)),
        )
        listing.not_before = asyncio.get_running_loop().time() + delay
        self._metrics.listing_errors(listing.owner, reason).inc()
        if isinstance(error, AuthError):
            log.error(
                "the platform refuses the API key; check XPANDER_API_KEY",
                extra={"owner": listing.owner, "status": error.status},
            )
            self._health.refused(error)
            return
        log.warning(
            "listing tasks failed; retrying this listing alone",
            extra={
                "owner": listing.owner,
                "reason": reason,
                "error": str(error),
                "failures": listing.failures,
                "retry_in_s": round(delay, 2),
            },
        )

    def _report(self) -> None:
        """Per-listing metrics, and the platform's readiness from all of them."""
        failing = [listing for listing in self._listings if listing.failure is not None]
        for listing in self._listings:
            self._metrics.listing_failing(listing.owner).set(0 if listing.failure is None else 1)
        detail = "; ".join(f"{f.owner}: {f.failure}" for f in failing)[:500]
        every_one = bool(self._listings) and len(failing) == len(self._listings)
        if not every_one:
            self._health.reachable()
        self._health.listings(not every_one, f"failing: {detail}" if detail else "")

    def _consider(
        self,
        task_id: str,
        item: dict[str, Any],
        previous: set[str] | None,
        live_unowned_before: set[str],
        live_unowned: set[str],
    ) -> None:
        """One listed task: follow it, emit its unseen end, or leave it."""
        supervisor = self._supervisor
        terminal = item.get("status") in TERMINAL_STATUSES
        if supervisor.is_known(task_id):
            return
        if not self._claims.owns(task_id):
            if not terminal:
                live_unowned.add(task_id)
            return
        checkpoint = self._claims.checkpoint(task_id)
        if checkpoint is not None and checkpoint.finished:
            # Its end is in Kafka; its activity thread may not be (usually
            # started at the assignment already: then this is a no-op).
            supervisor.fetch_activity(checkpoint)
            return
        if not terminal or (checkpoint is not None and checkpoint.last_stream_event_id):
            # Running, or ended while its stream was unread: the stream
            # (Last-Event-ID, or a replay) gives the rest; the status check
            # beside it emits the end if the stream cannot.
            supervisor.follow(item, checkpoint)
            return
        ended_unseen = (
            checkpoint is not None
            or (
                previous is not None and (task_id not in previous or task_id in live_unowned_before)
            )
            or self._ended_recently(item)
        )
        if ended_unseen:
            # Between two listings, or while no replica streamed it (no
            # checkpoint, or one not finished).
            supervisor.finish_unseen(item, checkpoint)

    def _ended_recently(self, item: dict[str, Any]) -> bool:
        window = self._claims.catch_up_window_s
        if not window:
            return False
        for field_ in ("finished_at", "updated_at"):
            value = item.get(field_)
            if isinstance(value, str):
                try:
                    ended = datetime.fromisoformat(value)
                except ValueError:
                    continue
                if ended.tzinfo is None:
                    ended = ended.replace(tzinfo=UTC)
                return time.time() - ended.timestamp() <= window
        return False

    def _interval(self, seconds: float) -> float:
        spread = self._config.jitter
        return seconds * self._rng.uniform(1 - spread, 1 + spread)
