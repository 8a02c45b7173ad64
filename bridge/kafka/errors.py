"""aiokafka's exceptions as bridge errors: the one boundary where they are
translated (``bridge.errors`` draws the tree). Too large is permanent for
that record; everything else the client raises is retryable."""

from __future__ import annotations

from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from bridge.errors import BridgeError, RequestTimeoutError, UnavailableError
from bridge.errors import RecordTooLargeError as RecordTooLarge

__all__ = ["translate_send_error"]


def translate_send_error(exc: BaseException) -> BridgeError:
    """A failed send (or a failed delivery future) as the error the runner acts on."""
    if isinstance(exc, BridgeError):
        return exc
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return RecordTooLarge(f"record over the broker's size limit: {exc}")
    if isinstance(exc, KafkaTimeoutError):
        return RequestTimeoutError("Kafka did not acknowledge in time")
    if isinstance(exc, KafkaError):
        return UnavailableError(f"Kafka send failed: {type(exc).__name__}")
    return UnavailableError(f"Kafka send failed: {type(exc).__name__}: {exc}")
