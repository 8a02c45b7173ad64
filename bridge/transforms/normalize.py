"""Platform events into envelope records: the per-event hot path.

One call per SSE frame: parse with orjson, pick category/status/route, assign
the task's next ``sequence``, write the envelope dict once with orjson, attach
CloudEvents 1.0 binary-mode headers (Kafka protocol binding: ``ce_*`` headers,
``content-type``). Everything that can be computed once per task or per type is
cached (header bytes, ``ce_source``, ``ce_type``, routes).

A frame that is not JSON, or not an event object, becomes a dead-letter record
with the raw bytes, and takes no sequence number.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.config import KafkaConfig, TopicsConfig
from bridge.coordination.checkpoints import Checkpoint
from bridge.observability.metrics import DeadLetterReason, Metrics, TaskEndStatus
from bridge.pipeline.acks import OrderedAcks
from bridge.pipeline.record import Headers, OutRecord
from bridge.sinks.kafka.dead_letter import dead_letter
from bridge.transforms.envelope import SCHEMA_VERSION, Category, EventSource

__all__ = [
    "CATEGORY_BY_TYPE",
    "LIFECYCLE_TYPES",
    "Normalizer",
    "TaskState",
    "event_id_for",
]

LIFECYCLE_TYPES = frozenset({"task_created", "task_updated", "task_finished"})

CATEGORY_BY_TYPE: dict[str, Category] = {
    **dict.fromkeys(LIFECYCLE_TYPES, Category.LIFECYCLE),
    **dict.fromkeys(
        ("sub_task_created", "sub_task_updated", "sub_task_finished", "process_state_changed"),
        Category.LIFECYCLE,
    ),
    **dict.fromkeys(
        ("chunk", "inline_card", "live_surface_created", "process_update"), Category.OUTPUT
    ),
    **dict.fromkeys(("tool_call_request", "tool_call_result"), Category.TOOL),
    **dict.fromkeys(
        ("think", "analyze", "context_status", "task_compactization"), Category.REASONING
    ),
    **dict.fromkeys(
        ("plan_updated", "sub_agent_trigger", "agent_gateway_decision", "gateway_steer_applied"),
        Category.PLANNING,
    ),
    **dict.fromkeys(("auth_event", "ask_for_secret", "secret_saved"), Category.AUTH),
}

CE_TYPE_PREFIX = "ai.xpander.task."
_STATIC_HEADERS: Headers = [("ce_specversion", b"1.0"), ("content-type", b"application/json")]
# Room kept for the key, the headers and the record framing under the size limit.
_RECORD_OVERHEAD = 2048
#: The terminal statuses (``wire.TERMINAL_STATUSES``, a test keeps them equal)
#: by their word: one lookup turns a task_finished's status into its label.
_END_STATUSES: dict[str, TaskEndStatus] = {status.value: status for status in TaskEndStatus}


@dataclass(slots=True)
class TaskState:
    """What the bridge knows of one followed task; owned by its stream or poller."""

    task_id: str
    agent_id: str | None
    organization_id: str | None
    #: the last sequence handed out (the next envelope gets sequence + 1)
    sequence: int = 0
    status: str | None = None
    #: a ``task_finished`` envelope was emitted (from the stream, a poll or a resync)
    finished: bool = False
    #: per-sequence delivery acks; ``acks.done`` is the last sequence safely in Kafka
    acks: OrderedAcks = field(default_factory=lambda: OrderedAcks(start=1))
    key: bytes = b""
    ce_source: bytes = b""
    #: ``event_id`` of the task's first streamed event (a replay starts with it)
    first_event_id: str | None = None
    #: what the envelope at ``acks.done`` carried: what a checkpoint records
    acked_sse_id: str | None = None
    acked_event_id: str | None = None
    #: ``event_id`` of the last acknowledged envelope read from the stream itself
    acked_stream_event_id: str | None = None
    acked_status: str | None = None
    #: the sequence covered by a checkpoint Kafka acknowledged
    checkpointed: int = 0
    checkpoint_final: bool = False
    #: (sequence, sse_id, event_id, status) of envelopes not yet covered by acks.done
    pending: deque[tuple[int, str | None, str, str | None, bool]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.key = self.task_id.encode()
        self._set_source()

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue where a checkpoint left off: the sequence goes on, never from 0."""
        self.sequence = self.checkpointed = checkpoint.sequence
        self.acks = OrderedAcks(start=checkpoint.sequence + 1)
        self.acked_sse_id = checkpoint.last_sse_id
        self.acked_event_id = checkpoint.last_event_id
        self.acked_stream_event_id = checkpoint.last_stream_event_id
        self.acked_status = self.status = checkpoint.status
        self.first_event_id = checkpoint.first_event_id
        self.finished = self.checkpoint_final = checkpoint.finished
        self.learn(checkpoint.agent_id, checkpoint.organization_id)

    def delivered(self, sequence: int) -> None:
        """Every record of envelope ``sequence`` is in Kafka."""
        done = self.acks.ack(sequence)
        pending = self.pending
        while pending and pending[0][0] <= done:
            _, sse_id, event_id, status, from_stream = pending.popleft()
            if sse_id is not None:
                self.acked_sse_id = sse_id
            self.acked_event_id = event_id
            if from_stream:
                self.acked_stream_event_id = event_id
            if status is not None:
                self.acked_status = status

    def learn(self, agent_id: str | None, organization_id: str | None) -> None:
        """Fill identity fields the discovery listing did not have."""
        changed = False
        if agent_id and not self.agent_id:
            self.agent_id, changed = agent_id, True
        if organization_id and not self.organization_id:
            self.organization_id, changed = organization_id, True
        if changed:
            self._set_source()

    def _set_source(self) -> None:
        self.ce_source = (
            f"/xpander/organizations/{self.organization_id or '-'}/agents/{self.agent_id or '-'}"
        ).encode()


def event_id_for(task_id: str, frame: bytes, sse_id: str | None) -> str:
    """The ``event_id`` a frame gets, without building its envelope (replay skipping)."""
    return _event_id(task_id, _id_material(frame, sse_id))


def _id_material(frame: bytes, sse_id: str | None) -> bytes:
    """With server ids the id decides; without, the frame's bytes (type, time, content)."""
    return b"id\x00" + sse_id.encode() if sse_id is not None else b"frame\x00" + frame


def _event_id(task_id: str, material: bytes) -> str:
    digest = hashlib.blake2b(material, digest_size=16, person=b"xpander-bridge1")
    digest.update(task_id.encode())
    return digest.hexdigest()


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
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return None
        return value
    return None


class Normalizer:
    """Turns platform events into envelope records for one bridge instance."""

    def __init__(
        self,
        topics: TopicsConfig,
        kafka: KafkaConfig,
        metrics: Metrics,
        *,
        on_delivered: Callable[[TaskState, int], None] | None = None,
        clock: Callable[[], str] = _iso_now,
        publish_connected: bool = False,
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
        self._on_delivered = on_delivered
        self._clock = clock
        self._ce_types: dict[str, bytes] = {}
        self._received = metrics.sse_events_received
        self._filtered = metrics.events_filtered

    # --- entry points ---------------------------------------------------------

    def from_frame(
        self, task: TaskState, frame: bytes, sse_id: str | None, received_at: float
    ) -> list[OutRecord]:
        """One SSE ``data`` payload into its records (none when filtered)."""
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
        return self.emit(
            task,
            event_type,
            event.get("data"),
            source=EventSource.SSE,
            occurred_at=_valid_time(event.get("time")),
            received_at=received_at,
            id_material=_id_material(frame, sse_id),
            sse_id=sse_id,
        )

    def emit(
        self,
        task: TaskState,
        event_type: str,
        data: Any,
        *,
        source: EventSource,
        occurred_at: str | None,
        received_at: float,
        id_material: bytes,
        sse_id: str | None = None,
    ) -> list[OutRecord]:
        """Build the envelope record(s) for one event and advance the task's state."""
        label = self._metrics.event_type(event_type)  # once per event: counters and records
        if source is EventSource.SSE:
            self._received(label).inc()
        if event_type in self._routes:
            topic = self._routes[event_type]
            if topic is None:
                self._filtered(label).inc()
                return []
        else:
            topic = self._events_topic

        status = None
        lifecycle = event_type in LIFECYCLE_TYPES and isinstance(data, dict)
        if lifecycle:
            raw_status = data.get("status")
            status = raw_status if isinstance(raw_status, str) else None
            task.learn(data.get("agent_id"), data.get("organization_id"))
            if status is not None:
                task.status = status
            if event_type == "task_finished":
                task.finished = True
                end = _END_STATUSES.get(status) if status is not None else None
                if end is not None:
                    agent = self._metrics.agent_label(task.agent_id or "unknown")
                    self._metrics.tasks_finished(agent, end).inc()

        task.sequence += 1
        sequence = task.sequence
        observed_at = self._clock()
        event_id = _event_id(task.task_id, id_material)
        envelope = {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id,
            "type": event_type,
            # StrEnum members: orjson writes their string, no .value lookup per event
            "category": CATEGORY_BY_TYPE.get(event_type, Category.OTHER),
            "task_id": task.task_id,
            "agent_id": task.agent_id,
            "organization_id": task.organization_id,
            "status": status,
            "occurred_at": occurred_at or observed_at,
            "observed_at": observed_at,
            "sequence": sequence,
            "source": source,
            "sse_id": sse_id,
            "truncated": False,
            "data": data,
        }
        value = orjson.dumps(envelope)
        records: list[OutRecord] = []
        if len(value) > self._limit:
            value = self._truncate(task, envelope, value, received_at, records)
        headers = self._headers(task, event_type, event_id, envelope["occurred_at"])
        records.append(OutRecord(topic, task.key, value, headers, label, received_at))
        if lifecycle and self._state_topic:
            records.append(
                OutRecord(self._state_topic, task.key, value, headers, label, received_at)
            )
        task.acks.track(sequence)
        from_stream = source is EventSource.SSE
        task.pending.append((sequence, sse_id, event_id, status, from_stream))
        # The handshake is per connection, not task history: a replay never repeats it.
        if task.first_event_id is None and from_stream and event_type != "connected":
            task.first_event_id = event_id
        self._join_acks(task, sequence, records)
        return records

    # --- pieces ---------------------------------------------------------------

    def _headers(self, task: TaskState, event_type: str, event_id: str, time: str) -> Headers:
        ce_type = self._ce_types.get(event_type)
        if ce_type is None:
            ce_type = self._ce_types.setdefault(event_type, (CE_TYPE_PREFIX + event_type).encode())
        return [
            *_STATIC_HEADERS,
            ("ce_id", event_id.encode()),
            ("ce_source", task.ce_source),
            ("ce_type", ce_type),
            ("ce_time", time.encode()),
            ("ce_subject", task.key),
        ]

    def _join_acks(self, task: TaskState, sequence: int, records: list[OutRecord]) -> None:
        """The event counts as delivered when every one of its records is."""
        remaining = len(records)

        def part_delivered(_: OutRecord) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                task.delivered(sequence)
                if self._on_delivered is not None:
                    self._on_delivered(task, sequence)

        for record in records:
            record.on_delivered = part_delivered

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
