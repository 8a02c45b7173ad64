"""Recording one report or metrics message on the platform.

The retry policy lives here, once: timeouts, 5xx and 429 are retried with a
capped, fully jittered back-off that honours ``Retry-After``, without an
expiry (a report is never dropped because the platform was away for an
hour). 401/403 means the bridge's credentials are wrong, not the message:
recording halts for every message (readiness false, ``reports_halted`` 1, a
loud log line) and the same request is retried slowly until the key works.
Any other 4xx is the message's fault: it is raised for the dead-letter path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bridge.config import ReportsConfig
from bridge.errors import AuthError, RetryableError
from bridge.observability.metrics import Metrics, ReportRetryReason
from bridge.pipeline.backoff import Backoff
from bridge.platform.client import PlatformClient
from bridge.transforms.reports import ParsedMessage, ReportKind

__all__ = ["Recorder"]

log = logging.getLogger(__name__)


class Recorder:
    def __init__(
        self,
        client: PlatformClient,
        metrics: Metrics,
        config: ReportsConfig,
        *,
        on_halt: Callable[[AuthError], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._config = config
        self._on_halt = on_halt
        self._on_resume = on_resume
        self.halted = False

    async def record(self, message: ParsedMessage) -> Any:
        """The platform's answer; raises ``RejectedError`` for a message it refuses."""
        backoff = Backoff(self._config.retry_initial_s, self._config.retry_max_s)
        kind = message.kind
        while True:
            try:
                if message.kind is ReportKind.REPORT:
                    answer = await self._client.report_task(message.agent_id, message.body)
                else:
                    answer = await self._client.report_metrics(message.agent_id, message.body)
            except AuthError as exc:
                self._halt(exc)
                self._metrics.report_retries(kind, ReportRetryReason.AUTH).inc()
                await asyncio.sleep(backoff.next_delay())
                continue
            except RetryableError as exc:
                reason = (
                    ReportRetryReason.RATE_LIMITED
                    if exc.status == 429
                    else ReportRetryReason.UNAVAILABLE
                )
                self._metrics.report_retries(kind, reason).inc()
                await asyncio.sleep(backoff.next_delay(exc.retry_after))
                continue
            if self.halted:
                self._resume()
            return answer

    def _halt(self, exc: AuthError) -> None:
        if self.halted:
            return
        self.halted = True
        self._metrics.reports_halted.set(1)
        log.error(
            "the platform refuses the API key: report recording is HALTED, nothing is "
            "committed or dead-lettered; it resumes by itself once the key works",
            extra={"status": exc.status},
        )
        if self._on_halt is not None:
            self._on_halt(exc)

    def _resume(self) -> None:
        self.halted = False
        self._metrics.reports_halted.set(0)
        log.warning("the platform accepts the API key again: report recording resumed")
        if self._on_resume is not None:
            self._on_resume()
