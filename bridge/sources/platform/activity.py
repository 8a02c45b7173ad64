"""Fetch an ended task's activity log and publish it (the activity topic).

Run by the task's worker once its ``task_finished`` envelope was emitted, or
by an activity-only worker for a task whose checkpoint says the thread is
still due (a restart or an ownership move in between). What each answer does:

- 5xx, 429, 408, a timeout or a broken connection: retried with the workers'
  ``reconnect`` back-off, without an expiry, at least ``Retry-After``;
- 401/403: the bridge reports the platform refused (not ready), and retries;
- another 4xx (404 included) or an answer that is not a JSON object: a
  dead-letter record (``activity_rejected``) accounts for the task's activity.

Either way the task's activity is settled when the record is written
(``TaskState.activity_due`` cleared by the transform), never before.

Fetches take turns (``bridge.sources.platform.pacer``): when thousands of
tasks end together, their threads come after the events of the tasks still
running, not in their way.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.core.task import TaskState
from bridge.errors import AuthError, BridgeError, RateLimitedError, RejectedError
from bridge.observability.metrics import ActivityFetchFailure
from bridge.sources.platform.context import WorkerContext

__all__ = ["publish_activity"]

log = logging.getLogger(__name__)


async def publish_activity(state: TaskState, ctx: WorkerContext) -> None:
    """Fetch the task's activity thread until an answer settles it, and hand its
    record(s) (or its dead letter) to the queue. Returns at once when the
    task's activity is not due."""
    agent_id = state.agent_id
    if not state.activity_due or not agent_id:
        return
    metrics = ctx.metrics
    loop = asyncio.get_running_loop()
    backoff = ctx.reconnect.backoff()
    while True:
        try:
            thread = await _fetch(state, agent_id, ctx)
        except RejectedError as exc:
            metrics.activity_fetch_failures(ActivityFetchFailure.REJECTED).inc()
            log.warning(
                "the platform refused a task's activity log; dead-lettered",
                extra={"task_id": state.task_id, "status": exc.status, "error": str(exc)},
            )
            records = ctx.transform.from_activity_rejected(state, str(exc), exc.status, loop.time())
            await ctx.publish(records)
            return
        except BridgeError as exc:
            if isinstance(exc, AuthError):
                reason = ActivityFetchFailure.REFUSED
                ctx.health.refused(exc)
            elif isinstance(exc, RateLimitedError):
                reason = ActivityFetchFailure.RATE_LIMITED
            else:
                reason = ActivityFetchFailure.UNAVAILABLE
            metrics.activity_fetch_failures(reason).inc()
            log.warning(
                "could not fetch a task's activity log; retrying",
                extra={"task_id": state.task_id, "reason": reason.value, "error": str(exc)},
            )
            await ctx.reconnect.wait(backoff, exc)
            continue
        metrics.activity_bytes.observe(len(thread))
        ctx.health.reachable()
        await ctx.publish(ctx.transform.from_activity(state, thread, loop.time()))
        return


async def _fetch(state: TaskState, agent_id: str, ctx: WorkerContext) -> bytes:
    """One fetch, in its turn (``ctx.activity_pacer``). The turn is held for the
    request only: a back-off (or a full queue) holds none, so a task whose
    fetch keeps failing cannot take the place of the others."""
    async with ctx.activity_pacer.turn():
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await ctx.client.get_activity_log_bytes(agent_id, state.task_id)
        finally:
            ctx.metrics.activity_fetch_latency.observe(loop.time() - started)
