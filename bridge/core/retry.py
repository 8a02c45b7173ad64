"""The one retry policy: which errors are worth another try, and how long to
wait before it (after Vector's ``RetryLogic`` and Redpanda Connect's
auto-retry wrapper: components raise typed errors, this decides).

Back-off is capped exponential with full jitter (AWS architecture blog,
"Exponential Backoff And Jitter"): the n-th delay is uniform in
``[0, min(cap, base * 2**n)]``. Full jitter spreads thousands of reconnecting
streams instead of herding them. A server's hint (``Retry-After``, SSE
``retry:``) is a floor, never ignored, but capped so a bogus header cannot
park a stream for hours.

Every component that retries (task streams, status polls, discovery, the
delivery loop, report recording, Kafka connects and group joins) holds a
``RetryPolicy`` and asks it; nothing else decides.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from enum import Enum

from bridge.errors import BridgeError, RefusedError, RetryableError

__all__ = ["Backoff", "RetryPolicy", "Verdict"]

_SHARED_RNG = random.Random()

#: The longest a server's hint may make us wait, whatever the cap.
_HINT_CEILING_S = 300.0


class Verdict(Enum):
    """What to do with a failed attempt."""

    RETRY = "retry"  #: transient: back off and try the same input again
    HALT = "halt"  #: the credentials are refused: stop this direction, retry slowly
    REJECT = "reject"  #: this input will never succeed: dead-letter or drop it, go on


class Backoff:
    """One per retrying thing; ``reset()`` after a success."""

    __slots__ = ("_attempt", "_rng", "base", "cap")

    def __init__(
        self, base: float, cap: float, rng: random.Random | None = None, *, attempt: int = 0
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("back-off needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._attempt = attempt
        # One shared generator: a Mersenne Twister is 2.5 KB, and there is a
        # back-off per stream (10,000 streams: 25 MB of generators).
        self._rng = rng or _SHARED_RNG

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self, hint: float | None = None) -> float:
        """The next sleep in seconds; ``hint`` is the server's requested wait."""
        ceiling = min(self.cap, self.base * (2 ** min(self._attempt, 32)))
        self._attempt += 1
        delay = self._rng.uniform(0, ceiling)
        if hint is not None and hint > delay:
            return min(hint, max(self.cap, _HINT_CEILING_S))
        return delay

    def reset(self) -> None:
        self._attempt = 0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A back-off curve plus the classification of errors."""

    initial_s: float
    max_s: float

    def backoff(self, *, attempt: int = 0) -> Backoff:
        return Backoff(self.initial_s, self.max_s, attempt=attempt)

    @staticmethod
    def verdict(error: BaseException) -> Verdict:
        """Read from the error tree (``retryable`` on each class), nowhere else."""
        if isinstance(error, RefusedError):
            return Verdict.HALT
        if isinstance(error, BridgeError) and error.retryable:
            return Verdict.RETRY
        return Verdict.REJECT

    @staticmethod
    def hint(error: BaseException) -> float | None:
        """The wait the other side asked for (``Retry-After``), if any."""
        return error.retry_after if isinstance(error, RetryableError) else None

    async def wait(self, backoff: Backoff, error: BaseException | None = None) -> float:
        """Sleep the next delay of ``backoff`` (at least the error's hint); returns it."""
        delay = backoff.next_delay(self.hint(error) if error is not None else None)
        await asyncio.sleep(delay)
        return delay
