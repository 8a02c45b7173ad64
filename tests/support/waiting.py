"""Waiting for an observable condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    what: str,
) -> None:
    """Return as soon as ``predicate()`` (plain or async) is true; poll every
    ``interval_s``; after ``timeout_s`` fail with an AssertionError naming ``what``.

    The predicate is evaluated at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)
