"""The daemon threads behind librdkafka's blocking calls (bridge/kafka/calls.py);
that they do not hold the process at exit: tests/kafka/test_async_producer.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bridge.kafka.calls import DaemonExecutor


async def test_calls_run_in_order_and_a_shutdown_cancels_the_queued_ones() -> None:
    calls = DaemonExecutor("test-calls")
    loop = asyncio.get_running_loop()
    running, gate = threading.Event(), threading.Event()
    done: list[int] = []

    def first_call() -> None:
        running.set()
        gate.wait(5)
        done.append(1)

    first = loop.run_in_executor(calls, first_call)
    second = loop.run_in_executor(calls, done.append, 2)
    failing = loop.run_in_executor(calls, int, "not a number")
    assert await asyncio.to_thread(running.wait, 5)
    calls.shutdown(wait=False, cancel_futures=True)
    gate.set()
    await first
    assert done == [1]  # the running call finished; the queued ones never ran
    with pytest.raises(asyncio.CancelledError):
        await second
    with pytest.raises(asyncio.CancelledError):
        await failing
    with pytest.raises(RuntimeError):
        calls.submit(done.append, 3)


async def test_a_call_that_raises_hands_its_error_to_the_caller() -> None:
    calls = DaemonExecutor("test-calls")
    try:
        with pytest.raises(ValueError, match="not a number"):
            await asyncio.get_running_loop().run_in_executor(calls, int, "not a number")
        assert await asyncio.get_running_loop().run_in_executor(calls, int, "7") == 7
    finally:
        calls.shutdown()


def test_its_threads_are_daemons() -> None:
    calls = DaemonExecutor("test-calls", workers=3)
    try:
        named = [t for t in threading.enumerate() if t.name.startswith("test-calls_")]
        assert len(named) >= 3 and all(t.daemon for t in named)
    finally:
        calls.shutdown()
