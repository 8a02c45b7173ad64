"""AsyncProducer's handling of the binding's fatal errors (the producer itself
is exercised against a real broker in tests/sinks/kafka/test_producer.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

from confluent_kafka import KafkaError, KafkaException

from bridge.errors import FencedError
from bridge.kafka.errors import translate_send_error
from bridge.kafka.producer import _fatal


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
