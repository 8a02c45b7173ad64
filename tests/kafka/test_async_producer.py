"""AsyncProducer's handling of the binding's fatal errors (the producer itself
is exercised against a real broker in tests/sinks/kafka/test_producer.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from bridge.errors import FencedError
from bridge.kafka.errors import translate_send_error
from bridge.kafka.producer import _CallThread, _fatal


def test_a_system_error_out_of_a_drained_call_is_the_producer_failing_fatally() -> None:
    # What flush raised when fenced: the binding had run callbacks with the
    # fatal error still set, and then returned NULL without an exception.
    seen = SystemError("<built-in method flush> returned NULL without setting an exception")
    fatal = _fatal(seen)
    assert isinstance(fatal.args[0], KafkaError) and fatal.args[0].fatal()
    assert isinstance(translate_send_error(fatal), FencedError)


def test_a_fatal_kafka_error_is_kept_as_it_is() -> None:
    raised = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    assert _fatal(raised) is raised


def test_a_call_waiting_on_an_unreachable_broker_does_not_hold_the_process_at_exit() -> None:
    # The transaction calls ran on a ThreadPoolExecutor, whose worker the
    # interpreter joins at exit: a call waiting on a broker that was gone held
    # the bridge up to its timeout after it had stopped (seen: 29 s after
    # SIGTERM, past the shutdown deadline, in tests/app/test_shutdown_bound.py).
    script = textwrap.dedent(
        """
        import asyncio
        import sys
        from bridge.kafka.producer import AsyncProducer

        async def main():
            address = f"127.0.0.1:{sys.argv[1]}"
            producer = AsyncProducer({"bootstrap.servers": address, "log_level": 0})
            waiting = asyncio.ensure_future(producer.list_topics(60))
            await asyncio.sleep(0.5)
            try:
                async with asyncio.timeout(0.5):
                    await producer.close(60)
            except TimeoutError:
                pass
            waiting.cancel()

        asyncio.run(main())
        """
    )
    started = time.monotonic()
    command = [sys.executable, "-c", script, str(nobody_listens())]
    subprocess.run(command, check=True, timeout=50, capture_output=True)
    # (the call's own bound is 60 s: anything near it means it was waited for)
    assert time.monotonic() - started < 30


def nobody_listens() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_calls_run_in_order_and_a_closed_producer_cancels_the_queued_ones() -> None:
    calls = _CallThread("test-calls")
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
    calls = _CallThread("test-calls")
    try:
        with pytest.raises(ValueError, match="not a number"):
            await asyncio.get_running_loop().run_in_executor(calls, int, "not a number")
        assert await asyncio.get_running_loop().run_in_executor(calls, int, "7") == 7
    finally:
        calls.shutdown()
