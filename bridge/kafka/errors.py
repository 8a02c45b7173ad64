"""aiokafka's exceptions as bridge errors: the one boundary where they are
translated (``bridge.errors`` draws the tree). Too large or malformed is
permanent for that record; an authorization failure or another error the
client calls non-retriable refuses every send (the delivery halts); the rest
(timeouts, connections, leaders moving) is retryable."""

from __future__ import annotations

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)

from bridge.errors import (
    AuthError,
    BridgeError,
    InvalidDataError,
    RefusedError,
    RequestTimeoutError,
    UnavailableError,
)
from bridge.errors import RecordTooLargeError as RecordTooLarge

#: refused for this record only: it is held, its task's checkpoint waits on it
_RECORD_REFUSALS = (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
)

__all__ = ["translate_send_error"]


def translate_send_error(exc: BaseException) -> BridgeError:  # noqa: PLR0911  (one return per kind of answer reads as a table)
    """A failed send (or a failed delivery future) as the error the runner acts on."""
    if isinstance(exc, BridgeError):
        return exc
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return RecordTooLarge(f"record over the broker's size limit: {exc}")
    if isinstance(exc, KafkaTimeoutError):
        return RequestTimeoutError("Kafka did not acknowledge in time")
    if isinstance(exc, TopicAuthorizationFailedError | ClusterAuthorizationFailedError):
        return AuthError(f"Kafka refuses the bridge's writes: {type(exc).__name__}")
    if isinstance(exc, _RECORD_REFUSALS):
        return InvalidDataError(f"Kafka refused the record: {type(exc).__name__}")
    if isinstance(exc, KafkaError) and not exc.retriable:
        return RefusedError(f"Kafka refused the send: {type(exc).__name__}")
    if isinstance(exc, KafkaError):
        return UnavailableError(f"Kafka send failed: {type(exc).__name__}")
    return UnavailableError(f"Kafka send failed: {type(exc).__name__}: {exc}")
