"""Full-jitter back-off: bounded, growing, honouring server hints; and the retry
policy's verdict on every error class of ``bridge.errors``."""

from __future__ import annotations

import asyncio
import random

import pytest

from bridge import errors
from bridge.core.retry import Backoff, RetryPolicy, Verdict

pytestmark = pytest.mark.timeout(10)


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


# --- RetryPolicy: the verdict on every error class, the hint, the wait -------------

#: Every class of bridge.errors and what the policy must do with it. The test
#: below fails when a class is added to bridge.errors without a line here.
VERDICTS: dict[type[BaseException], Verdict] = {
    errors.BridgeError: Verdict.REJECT,
    errors.ConfigError: Verdict.REJECT,
    errors.RetryableError: Verdict.RETRY,
    errors.UnavailableError: Verdict.RETRY,
    errors.RequestTimeoutError: Verdict.RETRY,
    errors.TransactionAbortedError: Verdict.RETRY,
    errors.RateLimitedError: Verdict.RETRY,
    errors.StreamInterrupted: Verdict.RETRY,
    errors.RejectedError: Verdict.REJECT,
    errors.InvalidDataError: Verdict.REJECT,
    errors.PlatformRejectedError: Verdict.REJECT,
    errors.NotFoundError: Verdict.REJECT,
    errors.RecordTooLargeError: Verdict.REJECT,
    errors.AuthError: Verdict.HALT,
    errors.RefusedError: Verdict.HALT,
    # never retried; the delivery loops stop on it before asking the policy
    errors.FencedError: Verdict.REJECT,
}


def test_every_error_class_has_a_verdict_in_this_table() -> None:
    classes = {
        value
        for name in errors.__all__
        if isinstance(value := getattr(errors, name), type) and issubclass(value, BaseException)
    }
    assert classes == set(VERDICTS)


@pytest.mark.parametrize(
    ("error_class", "verdict"), list(VERDICTS.items()), ids=[c.__name__ for c in VERDICTS]
)
def test_verdict_of_each_error_class(error_class: type[Exception], verdict: Verdict) -> None:
    assert RetryPolicy.verdict(error_class("boom")) is verdict


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (401, Verdict.HALT),
        (403, Verdict.HALT),
        (400, Verdict.REJECT),
        (404, Verdict.REJECT),
        (409, Verdict.REJECT),
        (422, Verdict.REJECT),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
    ],
)
def test_verdict_of_each_http_status(status: int, verdict: Verdict) -> None:
    assert RetryPolicy.verdict(errors.error_for_status(status, f"HTTP {status}")) is verdict


def test_an_error_from_outside_the_tree_is_never_retried() -> None:
    # A bug (KeyError, a third-party exception nobody translated) must not loop for ever.
    assert RetryPolicy.verdict(KeyError("x")) is Verdict.REJECT
    assert RetryPolicy.verdict(TimeoutError()) is Verdict.REJECT


def test_hint_reads_retry_after_of_retryable_errors_only() -> None:
    assert RetryPolicy.hint(errors.RateLimitedError("429", retry_after=2.5)) == 2.5
    assert RetryPolicy.hint(errors.UnavailableError("503", retry_after=7.0)) == 7.0
    assert RetryPolicy.hint(errors.error_for_status(429, "x", retry_after=3.0)) == 3.0
    assert RetryPolicy.hint(errors.RateLimitedError("429 without a header")) is None
    assert RetryPolicy.hint(errors.AuthError("401")) is None
    assert RetryPolicy.hint(ValueError("not ours")) is None


async def test_wait_sleeps_at_least_the_hint() -> None:
    policy = RetryPolicy(0.001, 0.002)  # the curve alone would sleep at most 2 ms
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = await policy.wait(policy.backoff(), errors.RateLimitedError("429", retry_after=0.05))
    assert delay >= 0.05
    assert loop.time() - started >= 0.05


async def test_wait_without_a_hint_follows_the_curve() -> None:
    policy = RetryPolicy(0.001, 0.004)
    backoff = policy.backoff()
    delays = [await policy.wait(backoff) for _ in range(6)]
    assert all(0 <= d <= min(0.004, 0.001 * 2**n) for n, d in enumerate(delays))
    assert backoff.attempt == 6
    # An error without a hint (or not retryable) changes nothing.
    assert await policy.wait(policy.backoff(), errors.AuthError("401")) <= 0.001


def test_backoff_resumes_at_the_given_attempt() -> None:
    policy = RetryPolicy(0.5, 60.0)
    assert policy.backoff(attempt=4).attempt == 4
    assert policy.backoff().attempt == 0
