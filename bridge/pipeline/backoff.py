"""Capped exponential back-off with full jitter (AWS architecture blog, "Exponential
Backoff And Jitter"): the n-th delay is uniform in [0, min(cap, base * 2**n)].
Full jitter spreads thousands of reconnecting streams instead of herding them.
A server's hint (``Retry-After``, SSE ``retry:``) is a floor, never ignored."""

from __future__ import annotations

import random

__all__ = ["Backoff"]

_SHARED_RNG = random.Random()


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
            # The server asked for at least this long; cap it so a bogus header
            # cannot park a stream for hours.
            return min(hint, max(self.cap, 300.0))
        return delay

    def reset(self) -> None:
        self._attempt = 0
