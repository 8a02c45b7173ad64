"""The platform sink of the Kafka-to-platform direction: records one report or
metrics message on the platform.

Retries, the halt on 401/403 and the rejection of other 4xx are the halting
caller's (``sinks/platform/halting.py``): a report is never dropped because
the platform was away, and a refused key halts recording for every message
(readiness false, ``reports_halted`` 1) until it works again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.config import ReportsConfig
from bridge.core.retry import RetryPolicy
from bridge.errors import AuthError
from bridge.observability.metrics import Metrics, ReportKind, ReportRetryReason
from bridge.platform.client import PlatformClient
from bridge.sinks.platform.halting import HaltingCaller

__all__ = ["Recorder"]


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
        self._caller = HaltingCaller(
            RetryPolicy(config.retry_initial_s, config.retry_max_s),
            metrics.reports_halted,
            what="report recording",
            on_halt=on_halt,
            on_resume=on_resume,
        )

    @property
    def halted(self) -> bool:
        return self._caller.halted

    async def record(self, kind: ReportKind, agent_id: str, body: bytes) -> Any:
        """The platform's answer; raises ``RejectedError`` for a message it refuses."""

        def count_retry(reason: ReportRetryReason) -> None:
            self._metrics.report_retries(kind, reason).inc()

        if kind is ReportKind.REPORT:
            return await self._caller.call(
                lambda: self._client.report_task(agent_id, body), count_retry
            )
        return await self._caller.call(
            lambda: self._client.report_metrics(agent_id, body), count_retry
        )
