"""The reconcile loop: list the tasks of every configured agent and user, follow
the non-terminal ones.

The first listing is the baseline: tasks already terminal then are history and
are not published. A task that appears in a later listing already terminal
started and ended between two listings; its end is still published (from a
resync), so no terminal state is missed. Listing errors back off (honouring
``Retry-After``); 401/403 marks the platform side not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.config import DiscoveryConfig
from bridge.coordination.checkpoints import Checkpoint
from bridge.errors import AuthError, BridgeError, RetryableError
from bridge.platform.client import PlatformClient
from bridge.platform.wire import TERMINAL_STATUSES
from bridge.sources.platform.supervisor import TaskSupervisor

__all__ = ["Discovery"]

log = logging.getLogger(__name__)

#: listing items handled between two yields to the event loop
_YIELD_EVERY = 256


class Discovery:
    def __init__(
        self,
        client: PlatformClient,
        supervisor: TaskSupervisor,
        config: DiscoveryConfig,
        *,
        on_success: Callable[[], None] | None = None,
        on_auth_error: Callable[[AuthError], None] | None = None,
        rng: random.Random | None = None,
        owns: Callable[[str], bool] | None = None,
        checkpoints: Mapping[str, Checkpoint] | None = None,
        catch_up_window_s: float | None = None,
    ) -> None:
        # With checkpoints, a task that ended within this window and has none
        # was published by nobody (every publisher writes a finished checkpoint
        # kept that long): its end is emitted. This covers tasks that started
        # and ended while their partition had no owner, or the bridge was down.
        self._catch_up = catch_up_window_s
        # With several replicas, each follows only the tasks it owns; the
        # checkpoints of those tasks say where each one stopped.
        self._owns = owns or (lambda _: True)
        self._checkpoints: Mapping[str, Checkpoint] = checkpoints if checkpoints is not None else {}
        self._wake = asyncio.Event()
        self._client = client
        self._supervisor = supervisor
        self._config = config
        self._on_success = on_success
        self._on_auth_error = on_auth_error
        self._rng = rng or random.Random()
        self._seen: set[str] | None = None  # every id in the previous listing
        # Tasks seen running while another replica (or nobody yet) owned them:
        # if one turns up ended once owned, with no checkpoint, nobody
        # published its end.
        self._live_unowned: set[str] = set()
        self.rounds = 0

    async def run(self) -> None:
        failures = 0
        while True:
            delay = self._interval()
            try:
                await self.reconcile()
                failures = 0
                if self._on_success is not None:
                    self._on_success()
            except AuthError as exc:
                failures += 1
                log.error(
                    "the platform refuses the API key; check XPANDER_API_KEY",
                    extra={"status": exc.status},
                )
                if self._on_auth_error is not None:
                    self._on_auth_error(exc)
            except BridgeError as exc:
                failures += 1
                hint = exc.retry_after if isinstance(exc, RetryableError) else None
                delay = max(delay, hint or 0.0, min(60.0, self._config.interval_s * 2**failures))
                log.warning(
                    "listing tasks failed; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2)},
                )
            self._wake.clear()
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
        supervisor = self._supervisor
        listings: list[tuple[Callable[[str], Awaitable[list[dict[str, Any]]]], str]] = [
            (self._client.list_agent_tasks, agent_id) for agent_id in self._config.agent_ids
        ] + [(self._client.list_user_tasks, user_id) for user_id in self._config.user_ids]
        for fetch, owner in listings:
            items = await fetch(owner)
            for index, item in enumerate(items):
                if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                    # A listing of thousands of new tasks starts thousands of
                    # workers: done in one go, that held the loop ~90 ms per
                    # 3,300 tasks while the open streams waited.
                    await asyncio.sleep(0)
                task_id = item.get("id")
                if not isinstance(task_id, str):
                    continue
                current.add(task_id)
                terminal = item.get("status") in TERMINAL_STATUSES
                if supervisor.is_known(task_id):
                    continue
                if not self._owns(task_id):
                    if not terminal:
                        live_unowned.add(task_id)
                    continue
                checkpoint = self._checkpoints.get(task_id)
                if checkpoint is not None and checkpoint.finished:
                    continue
                if not terminal or (checkpoint is not None and checkpoint.last_stream_event_id):
                    # Running, or ended while its stream was unread: the stream
                    # (Last-Event-ID, or a replay) gives the rest; the status
                    # check beside it emits the end if the stream cannot.
                    supervisor.follow(item, checkpoint)
                elif (
                    checkpoint is not None
                    or (
                        previous is not None
                        and (task_id not in previous or task_id in self._live_unowned)
                    )
                    or self._ended_recently(item)
                ):
                    # Ended unseen: between two listings, or while no replica
                    # streamed it (no checkpoint, or one not finished).
                    supervisor.finish_unseen(item, checkpoint)
            del items
        self._seen = current
        # Keep the tasks still listed: a task seen running stays a candidate.
        self._live_unowned = (self._live_unowned & current) | live_unowned
        self.rounds += 1

    def _ended_recently(self, item: dict[str, Any]) -> bool:
        if not self._catch_up:
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
                return time.time() - ended.timestamp() <= self._catch_up
        return False

    def _interval(self) -> float:
        spread = self._config.jitter
        return self._config.interval_s * self._rng.uniform(1 - spread, 1 + spread)
