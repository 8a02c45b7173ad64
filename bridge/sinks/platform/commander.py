"""The platform sink of task commands: create, update or stop one task.

Retries as the recorder's (``sinks/platform/halting.py``): timeouts, 5xx
and 429 are retried with a capped, fully jittered back-off honouring
``Retry-After``, without an expiry; 401/403 halts every command (readiness
false, ``commands_halted`` 1) and retries the same call until the key works;
any other 4xx is raised (``RejectedError``) for the rejection path.

A create runs once per command: its task id is fixed by the command
(``uuid5(namespace, command_id)``); the task is fetched first and only a 404
leads to the POST (with that ``id``); a POST answered 409 is a create that
already happened (a concurrent redelivery): the task is fetched and returned.
Creates pass a token bucket (``create_rate_per_s``, ``create_burst``) that
waits: a full bucket holds the message, and its partition pauses behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.config import CommandsConfig
from bridge.core.retry import RetryPolicy
from bridge.errors import AuthError, NotFoundError, RejectedError
from bridge.observability.metrics import Metrics, ReportRetryReason
from bridge.platform.client import PlatformClient
from bridge.sinks.platform.halting import HaltingCaller

__all__ = ["Commander", "TokenBucket"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONFLICT = 409


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take()`` waits for one (FIFO)."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._loop = asyncio.get_running_loop()
        self._updated = self._loop.time()
        self._lock = asyncio.Lock()

    async def take(self) -> float:
        """One token; returns the seconds waited for it."""
        async with self._lock:
            now = self._loop.time()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= 1
            if self._tokens >= 0:
                return 0.0
            wait = -self._tokens / self._rate
            await asyncio.sleep(wait)
            return wait


class Commander:
    def __init__(
        self,
        client: PlatformClient,
        metrics: Metrics,
        config: CommandsConfig,
        *,
        on_halt: Callable[[AuthError], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._bucket = TokenBucket(config.create_rate_per_s, config.create_burst)
        self._caller = HaltingCaller(
            RetryPolicy(config.retry_initial_s, config.retry_max_s),
            metrics.commands_halted,
            what="task commands",
            on_halt=on_halt,
            on_resume=on_resume,
        )

    @property
    def halted(self) -> bool:
        return self._caller.halted

    async def create(self, agent_id: str, task_id: str, body: bytes) -> tuple[dict[str, Any], bool]:
        """The task, and whether this call created it (``False``: it existed)."""
        try:
            return await self._call(lambda: self._client.get_task(task_id)), False
        except NotFoundError:
            pass
        self._metrics.command_rate_wait.inc(await self._bucket.take())
        try:
            return await self._call(lambda: self._client.create_task(agent_id, body)), True
        except RejectedError as exc:
            if exc.status != _CONFLICT:
                raise
        log.info("create answered 409: the task exists", extra={"task_id": task_id})
        return await self._call(lambda: self._client.get_task(task_id)), False

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self._call(lambda: self._client.get_task(task_id))

    async def update(self, task_id: str, body: bytes) -> dict[str, Any]:
        return await self._call(lambda: self._client.update_task(task_id, body))

    async def stop(self, task_id: str) -> dict[str, Any]:
        return await self._call(lambda: self._client.stop_task(task_id))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self._caller.call(call, self._count_retry)

    def _count_retry(self, reason: ReportRetryReason) -> None:
        self._metrics.command_retries(reason).inc()
