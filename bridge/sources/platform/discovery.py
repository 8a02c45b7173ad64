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
import logging
import random
from collections.abc import Callable
from typing import Any

from bridge.config import DiscoveryConfig
from bridge.errors import AuthError, BridgeError, RetryableError
from bridge.platform.client import PlatformClient
from bridge.platform.wire import TERMINAL_STATUSES
from bridge.sources.platform.supervisor import TaskSupervisor

__all__ = ["Discovery"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self._client = client
        self._supervisor = supervisor
        self._config = config
        self._on_success = on_success
        self._on_auth_error = on_auth_error
        self._rng = rng or random.Random()
        self._seen: set[str] | None = None  # every id in the previous listing
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
            await asyncio.sleep(delay)

    async def reconcile(self) -> None:
        """One listing of every agent and user; follow what is new."""
        listings: list[list[dict[str, Any]]] = []
        for agent_id in self._config.agent_ids:
            listings.append(await self._client.list_agent_tasks(agent_id))
        for user_id in self._config.user_ids:
            listings.append(await self._client.list_user_tasks(user_id))
        previous = self._seen
        current: set[str] = set()
        supervisor = self._supervisor
        for items in listings:
            for item in items:
                task_id = item.get("id")
                if not isinstance(task_id, str):
                    continue
                current.add(task_id)
                if supervisor.is_known(task_id):
                    continue
                if item.get("status") not in TERMINAL_STATUSES:
                    supervisor.follow(item)
                elif previous is not None and task_id not in previous:
                    supervisor.finish_unseen(item)
        self._seen = current
        self.rounds += 1

    def _interval(self) -> float:
        spread = self._config.jitter
        return self._config.interval_s * self._rng.uniform(1 - spread, 1 + spread)
