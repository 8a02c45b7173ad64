"""AsyncProducer's handling of the binding's fatal errors (the producer itself
is exercised against a real broker in tests/sinks/kafka/test_producer.py)."""

from __future__ import annotations

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
