"""Full-jitter back-off: bounded, growing, honouring server hints."""

from __future__ import annotations

import random

import pytest

from bridge.core.retry import Backoff


def test_delays_stay_under_the_growing_ceiling_and_the_cap() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(1))
    for attempt in range(20):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(8.0, 0.5 * 2**attempt)


def test_jitter_spreads_delays() -> None:
    delays = {round(Backoff(1.0, 60.0, random.Random(seed)).next_delay(), 6) for seed in range(50)}
    assert len(delays) > 40


def test_server_hint_is_a_floor_but_capped() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(0))
    assert backoff.next_delay(hint=5.0) == 5.0
    assert backoff.next_delay(hint=10_000.0) == 300.0


def test_reset_starts_the_curve_again() -> None:
    backoff = Backoff(1.0, 1000.0, random.Random(0))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_invalid_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
