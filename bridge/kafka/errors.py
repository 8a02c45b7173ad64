"""librdkafka's errors as bridge errors: the one boundary where they are
translated (``bridge.errors`` draws the tree).

- too large, malformed: permanent for that record (it is held);
- authorization, a setting the cluster refuses: every send is refused (the
  delivery halts until it passes);
- fenced, or any error librdkafka calls fatal: the producer is finished
  (another replica took its ``transactional.id``, or the idempotence state is
  broken); the bridge stops;
- the rest (timeouts, connections, leaders moving, a transaction to abort and
  redo): retryable.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from bridge.errors import (
    AuthError,
    BridgeError,
    FencedError,
    InvalidDataError,
    RefusedError,
    RequestTimeoutError,
    UnavailableError,
)
from bridge.errors import RecordTooLargeError as RecordTooLarge

__all__ = ["kafka_error", "stale_generation", "translate_send_error"]

_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
_TIMEOUTS = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT}
)
_AUTH = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)
#: refused for this record only: it is held, its task's checkpoint waits on it
_RECORD_REFUSALS = frozenset(
    {
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
    }
)
#: a setting the cluster cannot honour: every send refused alike
_SETTING_REFUSALS = frozenset(
    {
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_TRANSACTION_TIMEOUT,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError._NOT_IMPLEMENTED,
    }
)
#: the producer is finished: fenced, or (``_FATAL``: what ``produce`` raises
#: once librdkafka failed fatally, without the fatal flag set) failed for good
_PRODUCER_FINISHED = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError._FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError._FATAL,
    }
)


#: a transactional offset commit from a generation or member the group has left
_STALE_GENERATION = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)


def stale_generation(exc: KafkaException) -> bool:
    """The broker refused offsets for the group generation they carried."""
    error = kafka_error(exc)
    return error is not None and error.code() in _STALE_GENERATION


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a confluent-kafka exception carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def translate_send_error(error: BaseException | KafkaError) -> BridgeError:  # noqa: PLR0911  (one return per kind of answer reads as a table)
    """A failed send, delivery report or transaction call as the error the runner acts on."""
    if isinstance(error, BridgeError):
        return error
    if isinstance(error, BaseException):
        carried = kafka_error(error)
        if carried is None:
            return UnavailableError(f"Kafka send failed: {type(error).__name__}: {error}")
        error = carried
    code = error.code()
    name = error.name()
    if code in _PRODUCER_FINISHED or error.fatal():
        return FencedError(f"the Kafka producer is fenced or failed fatally: {name}: {error.str()}")
    if code in _TOO_LARGE:
        return RecordTooLarge(f"record over the broker's size limit: {name}")
    if code in _TIMEOUTS:
        return RequestTimeoutError(f"Kafka did not acknowledge in time: {name}")
    if code in _AUTH:
        return AuthError(f"Kafka refuses the bridge's writes: {name}")
    if code in _RECORD_REFUSALS:
        return InvalidDataError(f"Kafka refused the record: {name}")
    if code in _SETTING_REFUSALS:
        return RefusedError(f"Kafka refused the send: {name}: {error.str()}")
    return UnavailableError(f"Kafka send failed: {name}: {error.str()}")
