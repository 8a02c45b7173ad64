"""Dead-letter records: the original bytes, untouched, with why and where from in
headers. One shape for both directions, so one consumer can triage the DLQ.

Headers (all UTF-8): ``dlq.reason`` (a fixed word, also the metric label),
``dlq.error`` (a short human message, never a secret), ``dlq.source`` (``sse``,
``kafka``, ``bridge``), and where known ``dlq.task_id``, ``dlq.sse_id``,
``dlq.original_topic``, ``dlq.original_partition``, ``dlq.original_offset``,
``dlq.status`` (the platform's HTTP status), ``dlq.event_id``, ``dlq.part``,
``dlq.parts``, ``dlq.sha256`` (oversized bodies split in parts). Headers of
the original Kafka message are kept after these.
"""

from __future__ import annotations

from bridge.core.record import Headers, OutRecord
from bridge.observability.metrics import DeadLetterReason

__all__ = ["MAX_ERROR_CHARS", "dead_letter"]

MAX_ERROR_CHARS = 500


def dead_letter(  # noqa: PLR0913  (keyword-only: one per header the record carries)
    *,
    topic: str,
    value: bytes,
    key: bytes | None,
    reason: DeadLetterReason,
    error: str,
    source: str,
    received_at: float,
    attributes: dict[str, str | int | None] | None = None,
    original_headers: Headers | None = None,
) -> OutRecord:
    headers: Headers = [
        ("dlq.reason", reason.encode()),
        ("dlq.error", error[:MAX_ERROR_CHARS].encode("utf-8", "replace")),
        ("dlq.source", source.encode()),
    ]
    for name, attribute in (attributes or {}).items():
        if attribute is not None:
            headers.append((f"dlq.{name}", str(attribute).encode("utf-8", "replace")))
    if original_headers:
        headers.extend(original_headers)
    return OutRecord(
        topic=topic,
        key=key,
        value=value,
        headers=headers,
        event_type="dead_letter",
        received_at=received_at,
        dead_letter_reason=reason,
    )
