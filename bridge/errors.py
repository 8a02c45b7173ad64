"""The one exception tree of the bridge.

Every error a component raises is one of these; third-party exceptions
(aiohttp, librdkafka, pydantic) are translated at the edge that calls them, with
``raise ... from exc`` so the cause stays in the traceback.

    BridgeError
    ├── ConfigError                 bad configuration: exit 2, never retried
    ├── RetryableError              the same input may succeed later: back off, retry, never drop
    │   ├── UnavailableError        connect/read failure, 5xx, broker down
    │   │   ├── RequestTimeoutError a request or stream went silent past its deadline
    │   │   └── TransactionAbortedError  a Kafka transaction must be aborted and redone
    │   ├── RateLimitedError        429; carries ``retry_after`` seconds when the server sent one
    │   └── StreamInterrupted       an SSE stream ended or went idle before ``task_finished``
    ├── RejectedError               this input will never succeed: dead-letter it, move on
    │   ├── InvalidDataError        not JSON, not the expected shape, fails validation
    │   ├── PlatformRejectedError   a 4xx other than 401/403/404/408/429
    │   ├── NotFoundError           404: the task or agent is gone
    │   └── RecordTooLargeError     over the broker's message size limit
    ├── RefusedError                every request of this kind is refused (the bridge is
    │   │                           misconfigured, not the message): halt the affected
    │   │                           direction, report not-ready, retry slowly
    │   └── AuthError               401/403, or Kafka's authorization failures
    └── FencedError                 Kafka fenced the transactional producer: another
                                    process took this replica's place; stop, never retry

``retryable`` on each class is what the runner reads; nothing else decides.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BridgeError",
    "ConfigError",
    "FencedError",
    "InvalidDataError",
    "NotFoundError",
    "PlatformRejectedError",
    "RateLimitedError",
    "RecordTooLargeError",
    "RefusedError",
    "RejectedError",
    "RequestTimeoutError",
    "RetryableError",
    "StreamInterrupted",
    "TransactionAbortedError",
    "UnavailableError",
    "error_for_status",
]


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(BridgeError):
    """The configuration is invalid; ``field`` names the offending setting."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RetryableError(BridgeError):
    """Transient: the same request may succeed later."""

    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class UnavailableError(RetryableError):
    """The other side could not be reached or answered 5xx."""


class RequestTimeoutError(UnavailableError):
    """A request or an idle stream passed its deadline."""


class TransactionAbortedError(UnavailableError):
    """The open Kafka transaction failed as a whole (the broker aborted it, or a
    record in it failed): abort it and send its records again in a new one."""


class GroupGenerationError(TransactionAbortedError):
    """Consumer offsets sent with a transaction were refused: the group moved on
    from the generation (or member) they were sent for. Read the group's state
    anew; a member the group dropped is a zombie and stops (``FencedError``)."""


class RateLimitedError(RetryableError):
    """429 Too Many Requests."""


class StreamInterrupted(RetryableError):
    """An event stream ended or went idle before its terminal event."""


class RejectedError(BridgeError):
    """Permanent for this input: dead-letter it and go on."""


class InvalidDataError(RejectedError):
    """Input that is not what the contract says (bad JSON, wrong shape)."""


class PlatformRejectedError(RejectedError):
    """The platform refused the request (4xx other than auth, 404 and 429)."""


class NotFoundError(RejectedError):
    """404: the resource does not exist (any more)."""


class RecordTooLargeError(RejectedError):
    """The record is over the broker's size limit."""


class RefusedError(BridgeError):
    """Refused for every request of its kind (a setting, a permission), not just
    this input: the direction halts until it works again."""


class AuthError(RefusedError):
    """401/403, or Kafka's authorization failures: the credentials are wrong for
    every request, not just this one."""


class FencedError(BridgeError):
    """The transactional producer was fenced (or failed fatally): a newer producer
    with the same ``transactional.id`` took over, so this replica is a zombie.
    Nothing it sends can commit any more; the bridge stops rather than retry."""


def error_for_status(status: int, message: str, *, retry_after: float | None = None) -> BridgeError:
    """Map an HTTP status to the error class the runner acts on."""
    if status in (401, 403):
        return AuthError(message, status=status)
    if status == 404:
        return NotFoundError(message, status=status)
    if status == 429:
        return RateLimitedError(message, status=status, retry_after=retry_after)
    if status == 408:
        return RequestTimeoutError(message, status=status, retry_after=retry_after)
    if status >= 500:
        return UnavailableError(message, status=status, retry_after=retry_after)
    return PlatformRejectedError(message, status=status)
