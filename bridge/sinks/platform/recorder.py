"""The platform sink of the Kafka-to-platform direction: records one report or
metrics message on the platform.

Its retries go through the retry policy: timeouts, 5xx and 429 are retried
with a capped, fully jittered back-off that honours ``Retry-After``, without
an expiry (a report is never dropped because the platform was away for an
hour). 401/403 means the bridge's credentials are wrong, not the message:
recording halts for every message (readiness false, ``reports_halted`` 1, a
loud log line) and the same request is retried until the key works. Any
other 4xx is the message's fault: it is raised for the dead-letter path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bridge.config import ReportsConfig
from bridge.core.retry import RetryPolicy, Verdict
from bridge.errors import AuthError, BridgeError
from bridge.observability.metrics import Metrics, ReportKind, ReportRetryReason
from bridge.platform.client import PlatformClient

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
        self._retry = RetryPolicy(config.retry_initial_s, config.retry_max_s)
        self._on_halt = on_halt
        self._on_resume = on_resume
        self.halted = False

    async def record(self, kind: ReportKind, agent_id: str, body: bytes) -> Any:
        """The platform's answer; raises ``RejectedError`` for a message it refuses."""
        backoff = self._retry.backoff()
        while True:
            try:
                if kind is ReportKind.REPORT:
                    answer = await self._client.report_task(agent_id, body)
                else:
                    answer = await self._client.report_metrics(agent_id, body)
            except BridgeError as exc:
                verdict = self._retry.verdict(exc)
                if verdict is Verdict.REJECT:
                    if self.halted:
                        self._resume()  # an answer about the message: the key works again
                    raise
                if isinstance(exc, AuthError):
                    self._halt(exc)
                self._metrics.report_retries(kind, _retry_reason(exc, verdict)).inc()
                await self._retry.wait(backoff, exc)
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


def _retry_reason(error: BridgeError, verdict: Verdict) -> ReportRetryReason:
    if verdict is Verdict.HALT:
        return ReportRetryReason.AUTH
    if error.status == 429:
        return ReportRetryReason.RATE_LIMITED
    return ReportRetryReason.UNAVAILABLE
