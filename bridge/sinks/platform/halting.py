"""One platform call, retried until the platform answers about the message
itself: shared by the recorder (reports) and the commander (task commands).

Timeouts, 5xx and 429 are retried through the retry policy (capped, fully
jittered back-off honouring ``Retry-After``) without an expiry: nothing is
dropped because the platform was away for an hour. 401/403 means the bridge's
credentials are wrong, not the message: the caller halts (``halted`` true, its
gauge 1, one loud log line, ``on_halt``) and retries the same call until the
key works; the next answer about a message resumes it. Any other 4xx is the
message's fault and is raised (``RejectedError``) for the dead-letter path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Gauge

from bridge.core.retry import RetryPolicy, Verdict
from bridge.errors import AuthError, BridgeError
from bridge.observability.metrics import ReportRetryReason

__all__ = ["HaltingCaller"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class HaltingCaller:
    def __init__(
        self,
        retry: RetryPolicy,
        halted_gauge: Gauge,
        *,
        what: str,
        on_halt: Callable[[AuthError], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        """``what`` names the halted flow in its log lines ("report recording")."""
        self._retry = retry
        self._halted_gauge = halted_gauge
        self._what = what
        self._on_halt = on_halt
        self._on_resume = on_resume
        self.halted = False

    async def call(
        self,
        call: Callable[[], Awaitable[T]],
        count_retry: Callable[[ReportRetryReason], None],
    ) -> T:
        """``call()``'s answer; ``count_retry(reason)`` before each retry."""
        backoff = self._retry.backoff()
        while True:
            try:
                answer = await call()
            except BridgeError as exc:
                verdict = self._retry.verdict(exc)
                if verdict is Verdict.REJECT:
                    if self.halted:
                        self._resume()  # an answer about the message: the key works again
                    raise
                if isinstance(exc, AuthError):
                    self._halt(exc)
                count_retry(_retry_reason(exc, verdict))
                await self._retry.wait(backoff, exc)
                continue
            if self.halted:
                self._resume()
            return answer

    def _halt(self, exc: AuthError) -> None:
        if self.halted:
            return
        self.halted = True
        self._halted_gauge.set(1)
        log.error(
            f"the platform refuses the API key: {self._what} is HALTED, nothing is committed, "
            "answered or dead-lettered; it resumes by itself once the key works",
            extra={"status": exc.status},
        )
        if self._on_halt is not None:
            self._on_halt(exc)

    def _resume(self) -> None:
        self.halted = False
        self._halted_gauge.set(0)
        log.warning(f"the platform accepts the API key again: {self._what} resumed")
        if self._on_resume is not None:
            self._on_resume()


def _retry_reason(error: BridgeError, verdict: Verdict) -> ReportRetryReason:
    if verdict is Verdict.HALT:
        return ReportRetryReason.AUTH
    if error.status == 429:
        return ReportRetryReason.RATE_LIMITED
    return ReportRetryReason.UNAVAILABLE
