"""The reconcile loop: list the tasks of every configured agent and user, follow
the non-terminal ones.

The first listing is the baseline: tasks already terminal then are history and
are not published. A task that appears in a later listing already terminal
started and ended between two listings; its end is still published (from a
resync), so no terminal state is missed. Listing errors back off through the
retry policy (honouring ``Retry-After``); 401/403 marks the platform side not
ready. With several replicas, ``Claims`` says which tasks are this replica's
and where each stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from bridge.config import DiscoveryConfig
from bridge.core.retry import RetryPolicy
from bridge.errors import AuthError, BridgeError
from bridge.platform.client import PlatformClient
from bridge.sources.platform.context import AllTasks, Claims, PlatformHealth
from bridge.sources.platform.supervisor import TaskSupervisor
from bridge.wire import TERMINAL_STATUSES

__all__ = ["Discovery"]

log = logging.getLogger(__name__)

#: listing items handled between two yields to the event loop
_YIELD_EVERY = 256
#: the longest wait between two listings while they fail
_MAX_BACKOFF_S = 60.0

Listing = Callable[[str], Awaitable[list[dict[str, Any]]]]


class Discovery:
    def __init__(
        self,
        client: PlatformClient,
        supervisor: TaskSupervisor,
        config: DiscoveryConfig,
        health: PlatformHealth,
        *,
        claims: Claims | None = None,
        wake: asyncio.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._supervisor = supervisor
        self._config = config
        self._health = health
        self._claims: Claims = claims if claims is not None else AllTasks()
        self._rng = rng or random.Random()
        self._retry = RetryPolicy(config.interval_s, max(config.interval_s, _MAX_BACKOFF_S))
        #: set to list at once (this replica was given partitions)
        self._wake = wake if wake is not None else asyncio.Event()
        self._seen: set[str] | None = None  # every id in the previous listing
        # Tasks seen running while another replica (or nobody yet) owned them:
        # if one turns up ended once owned, with no checkpoint, nobody
        # published its end.
        self._live_unowned: set[str] = set()
        self.rounds = 0

    async def run(self) -> None:
        backoff = self._retry.backoff()
        while True:
            delay = self._interval()
            # Cleared before listing, not after: a wake that comes while the
            # listing runs (partitions just assigned) must bring the next one.
            self._wake.clear()
            try:
                await self.reconcile()
                backoff.reset()
                self._health.reachable()
            except AuthError as exc:
                backoff.next_delay()
                log.error(
                    "the platform refuses the API key; check XPANDER_API_KEY",
                    extra={"status": exc.status},
                )
                self._health.refused(exc)
            except BridgeError as exc:
                delay = max(delay, backoff.next_delay(self._retry.hint(exc)))
                log.warning(
                    "listing tasks failed; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2)},
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def wake(self) -> None:
        """List now (e.g. this replica was just given partitions)."""
        self._wake.set()

    async def reconcile(self) -> None:
        """One listing of every agent and user; follow what is new.

        Each listing is processed and dropped before the next is fetched: a
        listing holds every task of an agent, history included, and holding
        all of them at once was the largest transient allocation."""
        previous = self._seen
        current: set[str] = set()
        live_unowned: set[str] = set()
        for fetch, owner in self._listings():
            items = await fetch(owner)
            for index, item in enumerate(items):
                if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                    # A listing of thousands of new tasks starts thousands of
                    # workers: done in one go, that held the loop ~90 ms per
                    # 3,300 tasks while the open streams waited.
                    await asyncio.sleep(0)
                task_id = item.get("id")
                if isinstance(task_id, str):
                    current.add(task_id)
                    self._consider(task_id, item, previous, live_unowned)
            del items
        self._seen = current
        # Keep the tasks still listed: a task seen running stays a candidate.
        self._live_unowned = (self._live_unowned & current) | live_unowned
        self.rounds += 1

    def _listings(self) -> list[tuple[Listing, str]]:
        client = self._client
        return [(client.list_agent_tasks, agent) for agent in self._config.agent_ids] + [
            (client.list_user_tasks, user) for user in self._config.user_ids
        ]

    def _consider(
        self,
        task_id: str,
        item: dict[str, Any],
        previous: set[str] | None,
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
            return
        if not terminal or (checkpoint is not None and checkpoint.last_stream_event_id):
            # Running, or ended while its stream was unread: the stream
            # (Last-Event-ID, or a replay) gives the rest; the status check
            # beside it emits the end if the stream cannot.
            supervisor.follow(item, checkpoint)
            return
        ended_unseen = (
            checkpoint is not None
            or (previous is not None and (task_id not in previous or task_id in self._live_unowned))
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
        for field in ("finished_at", "updated_at"):
            value = item.get(field)
            if isinstance(value, str):
                try:
                    ended = datetime.fromisoformat(value)
                except ValueError:
                    continue
                if ended.tzinfo is None:
                    ended = ended.replace(tzinfo=UTC)
                return time.time() - ended.timestamp() <= window
        return False

    def _interval(self) -> float:
        spread = self._config.jitter
        return self._config.interval_s * self._rng.uniform(1 - spread, 1 + spread)
