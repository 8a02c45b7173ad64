"""Platform events into envelope records: the per-event hot path.

One call per SSE frame: parse with orjson, pick category/status/route, assign
the task's next ``sequence``, write the envelope dict once with orjson, attach
CloudEvents 1.0 binary-mode headers (Kafka protocol binding: ``ce_*`` headers,
``content-type``). Everything that can be computed once per task or per type is
cached (header bytes, ``ce_source``, ``ce_type``, routes).

A frame that is not JSON, or not an event object, becomes a dead-letter record
with the raw bytes, and takes no sequence number. Status snapshots (a resync
after a stream broke off, a poll, a recorded report) become lifecycle
envelopes through ``from_snapshot``, with an id derived from what made them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.config import KafkaConfig, TopicsConfig
from bridge.core.dead_letter import dead_letter
from bridge.core.identity import event_id, frame_id_material
from bridge.core.record import Headers, OutRecord
from bridge.core.task import PendingEnvelope, TaskState
from bridge.core.values import str_or_none
from bridge.envelope import CATEGORY_BY_TYPE, LIFECYCLE_TYPES, SCHEMA_VERSION, Category, EventSource
from bridge.observability.metrics import (
    ActivityOutcome,
    DeadLetterReason,
    Metrics,
    TaskEndStatus,
)
from bridge.transforms.activity import ActivityRecords
from bridge.transforms.agent_stats import AgentStats
from bridge.transforms.exact import encode_exact, needs_exact
from bridge.wire import TERMINAL_STATUSES

__all__ = ["Event", "Normalizer"]

log = logging.getLogger(__name__)

CE_TYPE_PREFIX = "ai.xpander.task."
#: the terminal statuses as metric labels, looked up once per task end
_END_STATUSES: dict[str, TaskEndStatus] = {status.value: status for status in TaskEndStatus}
_STATIC_HEADERS: Headers = [("ce_specversion", b"1.0"), ("content-type", b"application/json")]
#: ``ce_type`` header values kept ready, at most (beyond, built per event)
_MAX_CACHED_TYPES = 256
# Room kept for the key, the headers and the record framing under the size limit.
_RECORD_OVERHEAD = 2048


@dataclass(frozen=True, slots=True)
class Event:
    """One platform event, before it gets a sequence and an envelope."""

    type: str
    data: Any
    source: EventSource
    #: the platform's time for it, when it gave a valid one
    occurred_at: str | None
    #: loop time of receipt, for the latency histogram
    received_at: float
    #: what the deterministic ``event_id`` is derived from
    id_material: bytes
    sse_id: str | None = None
    #: the SSE frame it was read from, for the exact path (``transforms.exact``)
    frame: bytes | None = None


class _IsoClock:
    """``datetime.now(UTC).isoformat()``, with the part up to the second
    formatted once per second instead of once per event."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}+00:00"


_iso_now = _IsoClock()


def _valid_time(value: Any) -> str | None:
    """The platform's time as RFC 3339 (what CloudEvents' ``time`` and the
    schema's date-time require): as sent when it is, else the ISO 8601 forms
    Python reads rewritten (no offset: taken as UTC, the platform's zone; a
    date alone; the basic format); anything else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is not None and _rfc3339_shaped(value):
        return value  # (the usual case: no second parse, no regex on the hot path)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _rfc3339_shaped(value: str) -> bool:
    """The separators of RFC 3339 where they belong (``fromisoformat`` checked the digits)."""
    return (
        len(value) >= 20
        and value[4] == value[7] == "-"
        and value[10] in "Tt"
        and value[13] == value[16] == ":"
        and (value[-1] in "Zz" or (value[-6] in "+-" and value[-3] == ":"))
    )


def _snapshot_event(
    task_id: str, snapshot: dict[str, Any], source: EventSource
) -> tuple[str, bytes, str | None]:
    """(event type, id material, occurred_at) of a status snapshot, by what made it.

    The id material is what makes the same observation get the same
    ``event_id`` on every replica and after every restart."""
    status = snapshot.get("status")
    if source is EventSource.POLL:
        kind = "task_finished" if status in TERMINAL_STATUSES else "task_updated"
        return kind, f"poll\x00{status}\x00{snapshot.get('updated_at')}".encode(), None
    finished_at = str_or_none(snapshot.get("finished_at"))
    if source is EventSource.REPORT:
        return "task_finished", b"report\x00" + task_id.encode(), finished_at
    material = f"resync\x00{status}\x00{snapshot.get('finished_at')}".encode()
    return "task_finished", material, finished_at


class Normalizer:
    """Turns platform events into envelope records for one bridge instance."""

    def __init__(  # noqa: PLR0913  (keyword-only beyond three: each a port or a setting)
        self,
        topics: TopicsConfig,
        kafka: KafkaConfig,
        metrics: Metrics,
        *,
        on_written: Callable[[TaskState, int], None] | None = None,
        clock: Callable[[], str] = _iso_now,
        publish_connected: bool = False,
        agent_stats: AgentStats | None = None,
        activity: ActivityRecords | None = None,
    ) -> None:
        self._events_topic = topics.events
        self._state_topic = topics.state
        self._dlq_topic = topics.dlq
        self._routes: dict[str, str | None] = {}
        for rule in reversed(topics.routes):  # first match wins
            for event_type in rule.types:
                self._routes[event_type] = None if rule.drop else rule.topic
        if not publish_connected:
            # The per-connection handshake, not task history (a rule can still route it).
            self._routes.setdefault("connected", None)
        self._limit = max(4096, kafka.max_request_bytes - _RECORD_OVERHEAD)
        self._metrics = metrics
        self._on_written = on_written
        self._clock = clock
        self._ce_types: dict[str, bytes] = {}
        self._received = metrics.sse_events_received
        self._filtered = metrics.events_filtered
        self._stats = agent_stats
        #: ended tasks' activity threads (``None``: not published)
        self._activity = activity

    # --- entry points ---------------------------------------------------------

    def from_frame(
        self, task: TaskState, frame: bytes, sse_id: str | None, received_at: float
    ) -> list[OutRecord]:
        """One SSE ``data`` payload into its records (none when filtered).

        Nothing a frame contains may crash the task's worker: an unexpected
        error dead-letters this frame (``internal_error``), takes no sequence
        number, and the stream goes on."""
        try:
            return self._from_frame(task, frame, sse_id, received_at)
        except Exception as exc:
            log.exception(
                "an event could not be handled; dead-lettered",
                extra={"task_id": task.task_id, "sse_id": sse_id},
            )
            return [
                self._frame_dead_letter(
                    task,
                    frame,
                    sse_id,
                    received_at,
                    DeadLetterReason.INTERNAL_ERROR,
                    f"{type(exc).__name__}: {exc}",
                )
            ]

    def _from_frame(
        self, task: TaskState, frame: bytes, sse_id: str | None, received_at: float
    ) -> list[OutRecord]:
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            return [
                self._frame_dead_letter(
                    task, frame, sse_id, received_at, DeadLetterReason.INVALID_JSON, exc
                )
            ]
        event_type = event.get("type") if isinstance(event, dict) else None
        if not isinstance(event_type, str) or not event_type:
            return [
                self._frame_dead_letter(
                    task,
                    frame,
                    sse_id,
                    received_at,
                    DeadLetterReason.NOT_AN_EVENT,
                    "no string 'type' field",
                )
            ]
        observed = Event(
            event_type,
            event.get("data"),
            EventSource.SSE,
            _valid_time(event.get("time")),
            received_at,
            frame_id_material(frame, sse_id),
            sse_id,
            frame,
        )
        return self.emit(task, observed)

    def from_oversized_frame(
        self, task: TaskState, head: bytes, size: int, sse_id: str | None, received_at: float
    ) -> list[OutRecord]:
        """An SSE event too large to read (``streams.max_frame_bytes``): a small
        dead-letter record with its first bytes, and no sequence number."""
        return [
            dead_letter(
                topic=self._dlq_topic,
                value=head,
                key=task.key,
                reason=DeadLetterReason.FRAME_TOO_LARGE,
                error=f"SSE event of {size} bytes over streams.max_frame_bytes; skipped",
                source="sse",
                received_at=received_at,
                attributes={"task_id": task.task_id, "sse_id": sse_id, "bytes": size},
            )
        ]

    def from_snapshot(
        self, task: TaskState, snapshot: dict[str, Any], source: EventSource, received_at: float
    ) -> list[OutRecord]:
        """A task status snapshot as a lifecycle envelope: ``task_finished`` from
        a resync or a report; from a poll, ``task_finished`` when terminal, else
        ``task_updated``."""
        kind, material, occurred_at = _snapshot_event(task.task_id, snapshot, source)
        return self.emit(task, Event(kind, snapshot, source, occurred_at, received_at, material))

    def emit(self, task: TaskState, event: Event) -> list[OutRecord]:
        """Build the envelope record(s) for one event and advance the task's state."""
        label = self._metrics.event_type(event.type)  # once per event: counters and records
        if event.source is EventSource.SSE:
            self._received(label).inc()
        topic = self._topic(event.type, label)
        if topic is None:
            return []
        lifecycle, status = self._lifecycle(task, event)
        # The task's sequence and status move only once the envelope is
        # written: a failure before that takes nothing from the task.
        sequence = task.sequence + 1
        envelope = self._envelope(task, event, status, sequence)
        value = self._encode(envelope, event.frame)
        task.sequence = sequence
        if lifecycle:
            self._advance(task, event.type, status)
            if self._stats is not None:
                self._stats.lifecycle(task, event.type, status, event.data)
        elif event.type == "tool_call_result" and self._stats is not None:
            self._stats.tool_result(task, event.data)
        records: list[OutRecord] = []
        if len(value) > self._limit:
            value = self._truncate(task, envelope, value, event.received_at, records)
        headers = self._headers(task, event.type, envelope["event_id"], envelope["occurred_at"])
        records.append(OutRecord(topic, task.key, value, headers, label, event.received_at))
        if lifecycle and self._state_topic:
            records.append(
                OutRecord(self._state_topic, task.key, value, headers, label, event.received_at)
            )
        from_stream = event.source is EventSource.SSE
        task.track(
            PendingEnvelope(sequence, event.sse_id, envelope["event_id"], status, from_stream)
        )
        # The handshake is per connection, not task history: a replay never repeats it.
        if task.first_event_id is None and from_stream and event.type != "connected":
            task.first_event_id = envelope["event_id"]
        self._join_acks(task, sequence, records)
        return records

    def from_activity(self, task: TaskState, thread: bytes, received_at: float) -> list[OutRecord]:
        """An ended task's activity thread (as the platform sent it): its record,
        or its ordered parts (``bridge.transforms.activity``). They take no
        sequence number (the events stay gapless); once all are written the
        task's activity is no longer due and its final checkpoint can follow."""
        assert self._activity is not None, "no activity topic configured"
        records = self._activity.build(task, thread, self._clock(), received_at)
        outcome = ActivityOutcome.PUBLISHED
        if len(records) > 1:
            outcome = ActivityOutcome.PUBLISHED_IN_PARTS
        self._activity_done(task, records, outcome)
        return records

    def from_activity_rejected(
        self, task: TaskState, error: str, status: int | None, received_at: float
    ) -> list[OutRecord]:
        """The platform refused the thread for good: its dead-letter record,
        which settles the task's activity as the record would have."""
        assert self._activity is not None, "no activity topic configured"
        records = [self._activity.rejected(task, error, status, received_at)]
        self._activity_done(task, records, ActivityOutcome.REJECTED)
        return records

    def _activity_done(
        self, task: TaskState, records: list[OutRecord], outcome: ActivityOutcome
    ) -> None:
        remaining = len(records)
        counter = self._metrics.activity_threads(outcome)

        def part_written(_: OutRecord) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                task.activity_due = False
                if self._on_written is not None:  # the final checkpoint, same transaction
                    self._on_written(task, task.sequence)

        for record in records:
            record.on_written = part_written
        # counted once delivered (its transaction committed), not when written
        records[-1].on_delivered = lambda _: counter.inc()

    # --- pieces ---------------------------------------------------------------

    def _topic(self, event_type: str, label: str) -> str | None:
        """Where this type goes; ``None`` when a rule filters it (counted)."""
        routes = self._routes
        if event_type not in routes:
            return self._events_topic
        topic = routes[event_type]
        if topic is None:
            self._filtered(label).inc()
        return topic

    @staticmethod
    def _lifecycle(task: TaskState, event: Event) -> tuple[bool, str | None]:
        """Whether this is a lifecycle event, and its ``status``; it also fills the
        task's identity from it, which the envelope carries."""
        data = event.data
        if event.type not in LIFECYCLE_TYPES or not isinstance(data, dict):
            return False, None
        task.learn(data.get("agent_id"), data.get("organization_id"))
        return True, str_or_none(data.get("status"))

    @staticmethod
    def _encode(envelope: dict[str, Any], frame: bytes | None) -> bytes:
        """orjson, unless it would change a value or refuses the nesting: then
        ``data`` goes in as the frame's own bytes (``transforms.exact``)."""
        if frame is not None and needs_exact(frame):
            exact = encode_exact(envelope, frame)
            if exact is not None:
                return exact
        try:
            return orjson.dumps(envelope)
        except orjson.JSONEncodeError:
            exact = encode_exact(envelope, frame) if frame is not None else None
            if exact is None:
                raise
            return exact

    def _advance(self, task: TaskState, event_type: str, status: str | None) -> None:
        """A published lifecycle event's effect on the task: its status, its end."""
        if status is not None:
            task.status = status
        if event_type == "task_finished":
            if not task.finished and self._activity is not None:
                # Due until its record is written (the checkpoint is not final before).
                task.activity_due = self._activity.wanted(task)
            task.finished = True
            end = _END_STATUSES.get(status) if status is not None else None
            if end is not None:
                agent = self._metrics.agent_label(task.agent_id or "unknown")
                self._metrics.tasks_finished(agent, end).inc()

    def _envelope(
        self, task: TaskState, event: Event, status: str | None, sequence: int
    ) -> dict[str, Any]:
        observed_at = self._clock()
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id(task.task_id, event.id_material),
            "type": event.type,
            # StrEnum members: orjson writes their string, no .value lookup per event
            "category": CATEGORY_BY_TYPE.get(event.type, Category.OTHER),
            "task_id": task.task_id,
            "agent_id": task.agent_id,
            "organization_id": task.organization_id,
            "status": status,
            "occurred_at": event.occurred_at or observed_at,
            "observed_at": observed_at,
            "sequence": sequence,
            "source": event.source,
            "sse_id": event.sse_id,
            "truncated": False,
            "data": event.data,
        }

    def _headers(self, task: TaskState, event_type: str, event_id_: str, time_: str) -> Headers:
        ce_type = self._ce_types.get(event_type)
        if ce_type is None:
            ce_type = (CE_TYPE_PREFIX + event_type).encode()
            if len(self._ce_types) < _MAX_CACHED_TYPES:  # types are the platform's to invent
                self._ce_types[event_type] = ce_type
        return [
            *_STATIC_HEADERS,
            ("ce_id", event_id_.encode()),
            ("ce_source", task.ce_source),
            ("ce_type", ce_type),
            ("ce_time", time_.encode()),
            ("ce_subject", task.key),
        ]

    def _join_acks(self, task: TaskState, sequence: int, records: list[OutRecord]) -> None:
        """The event counts as written when every one of its records is (its
        task's position moves then; see ``bridge.core.record``)."""
        remaining = len(records)

        def part_written(_: OutRecord) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                task.delivered(sequence)
                if self._on_written is not None:
                    self._on_written(task, sequence)

        for record in records:
            record.on_written = part_written

    def _truncate(
        self,
        task: TaskState,
        envelope: dict[str, Any],
        value: bytes,
        received_at: float,
        records: list[OutRecord],
    ) -> bytes:
        """Split the full envelope into DLQ parts; return the stub envelope's bytes."""
        chunk = self._limit
        parts = math.ceil(len(value) / chunk)
        sha = hashlib.sha256(value).hexdigest()
        for index in range(parts):
            records.append(
                dead_letter(
                    topic=self._dlq_topic,
                    value=value[index * chunk : (index + 1) * chunk],
                    key=task.key,
                    reason=DeadLetterReason.OVERSIZED,
                    error=f"envelope of {len(value)} bytes over the {chunk}-byte limit",
                    source="bridge",
                    received_at=received_at,
                    attributes={
                        "task_id": task.task_id,
                        "event_id": envelope["event_id"],
                        "part": index + 1,
                        "parts": parts,
                        "sha256": sha,
                    },
                )
            )
        self._metrics.oversized_records.inc()
        stub = dict(envelope)
        stub["truncated"] = True
        stub["data"] = {
            "truncated": True,
            "original_bytes": len(value),
            "sha256": sha,
            "dlq_topic": self._dlq_topic,
            "parts": parts,
        }
        return orjson.dumps(stub)

    def _frame_dead_letter(
        self,
        task: TaskState,
        frame: bytes,
        sse_id: str | None,
        received_at: float,
        reason: DeadLetterReason,
        error: object,
    ) -> OutRecord:
        return dead_letter(
            topic=self._dlq_topic,
            value=frame,
            key=task.key,
            reason=reason,
            error=str(error),
            source="sse",
            received_at=received_at,
            attributes={"task_id": task.task_id, "sse_id": sse_id},
        )
