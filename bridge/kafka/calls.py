"""Daemon threads for librdkafka's blocking calls.

A ``concurrent.futures.ThreadPoolExecutor``'s workers are joined when the
interpreter exits, so a call still waiting on an unreachable broker (an
abort or a flush bounded only by ``kafka.request_timeout_ms``, a consumer's
close bounded by its session timeout) held the process that long after the
bridge had stopped, past its shutdown deadline (seen: exit 29 s after
SIGTERM with Kafka away). The shutdown bounds what is waited for; a call
still running when the process ends is abandoned with it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, ParamSpec, TypeVar

__all__ = ["DaemonExecutor"]

T = TypeVar("T")
P = ParamSpec("P")


class _Call(NamedTuple):
    future: concurrent.futures.Future[Any]
    fn: Callable[[], Any]


class DaemonExecutor(concurrent.futures.Executor):
    """``workers`` daemon threads taking calls in the order submitted (with one
    worker, each call runs after the one before it has returned)."""

    def __init__(self, name: str, workers: int = 1) -> None:
        self._work: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}_{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        if self._closed:
            raise RuntimeError("cannot take calls after shutdown")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._work.put(_Call(future, partial(fn, *args, **kwargs)))
        return future

    def _run(self) -> None:
        while (call := self._work.get()) is not None:
            if not call.future.set_running_or_notify_cancel():
                continue
            try:
                result = call.fn()
            except BaseException as exc:  # (handed to the caller, as an executor does)
                call.future.set_exception(exc)
            else:
                call.future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while (call := self._work.get_nowait()) is not None:
                    call.future.cancel()
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
