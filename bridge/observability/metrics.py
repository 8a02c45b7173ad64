"""Every metric the bridge exports, defined once.

Names are ``xpander_bridge_*``; counters end in ``_total``. Labels come from
fixed sets (event category, topic names from config, status, reason): never a
task id, never error text. The event type is the one open-ended label, so it
goes through ``BoundedLabel``: the types the platform is known to send, plus
the first few new ones, then ``other``.

Every label value from a fixed set is created at 0 when ``Metrics`` is built
(the reasons, outcomes and modes below, and each configured agent with each
terminal status): a series that first appears already at 1 is invisible to
``rate()`` and ``increase()``, so without this the first failure of a kind
would never alert. The sets are the constants below; the code that counts
uses those words, and ``tests/observability/test_metrics.py`` checks every
``.labels(...)`` call in ``bridge/`` against them.

A ``Metrics`` instance owns its registry, so several bridges can run in one
process (the tests do) without mixing their numbers. ``docs/METRICS.md`` lists
each metric; a test checks that list against this module.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge import __version__

__all__ = [
    "DEAD_LETTER_REASONS",
    "DROP_REASONS",
    "GC_GENERATIONS",
    "KNOWN_EVENT_TYPES",
    "OTHER",
    "PUBLISH_ERROR_REASONS",
    "RECONNECT_REASONS",
    "REPORT_KINDS",
    "REPORT_OUTCOMES",
    "REPORT_RETRY_REASONS",
    "RESUME_KINDS",
    "RESYNC_OUTCOMES",
    "TASK_END_STATUSES",
    "TRACKING_MODES",
    "BoundedLabel",
    "LabelledChildren",
    "Metrics",
]

# --- the fixed label sets (each created at 0 on start-up) --------------------

#: ``dead_letters_total{reason}``: why a record went to the dead-letter topic.
#: Platform to Kafka: a frame that is not JSON, JSON without a ``type``, an
#: envelope over the size limit (published truncated, body in the DLQ), a record
#: the broker refused even truncated. Kafka to platform: a report that fails
#: validation, a report the platform refused (4xx other than auth).
DEAD_LETTER_REASONS: Final = (
    "invalid_json",
    "not_an_event",
    "oversized",
    "undeliverable",
    "invalid_report",
    "platform_rejected",
)
#: ``publish_errors_total{reason}``: a failed Kafka send, by cause.
PUBLISH_ERROR_REASONS: Final = ("timeout", "unavailable", "too_large")
#: ``stream_reconnects_total{reason}``: why a task stream was reopened.
RECONNECT_REASONS: Final = (
    "ended",
    "not_found",
    "auth",
    "idle_timeout",
    "server_error",
    "network",
    "rate_limited",
)
#: ``resyncs_total{outcome}``: what the status fetch after a reconnect found.
RESYNC_OUTCOMES: Final = ("terminal", "running", "failed")
#: ``tasks_dropped_total{reason}``: why a task stopped being followed unfinished.
DROP_REASONS: Final = ("not_found",)
#: ``tasks_finished_total{status}``: the platform's terminal statuses
#: (``bridge.platform.wire.TERMINAL_STATUSES``; a test keeps the two equal).
TASK_END_STATUSES: Final = ("completed", "failed", "error", "stopped")
#: ``tracked_tasks{mode}``: how a task is followed.
TRACKING_MODES: Final = ("stream", "poll")
#: ``reports_*{kind}``: the two Kafka-to-platform topics.
REPORT_KINDS: Final = ("report", "metrics")
#: ``reports_recorded_total{outcome}``: how a report or metrics message ended:
#: recorded on the platform, written to the dead-letter topic, or skipped as a
#: redelivery of one recorded moments ago.
REPORT_OUTCOMES: Final = ("recorded", "dead_lettered", "duplicate")
#: ``report_retries_total{reason}``: why recording a report will be tried again:
#: the platform refused the credentials (recording halts until they work), a
#: 429, or no usable answer (timeout, network, 5xx).
REPORT_RETRY_REASONS: Final = ("auth", "rate_limited", "unavailable")

#: ``resumes_total{kind}``: how a task with a checkpoint was picked up again:
#: reconnecting with ``Last-Event-ID`` (``by_id``), skipping the events a
#: replaying server sends again (``replay_skip``), or, with neither, only
#: fetching the task's status so no terminal state is missed (``resync``).
RESUME_KINDS: Final = ("by_id", "replay_skip", "resync")

#: ``gc_pause_seconds{generation}``: Python's three collector generations.
GC_GENERATIONS: Final = ("0", "1", "2")

#: Event types the official client knows (``TaskUpdateEventType``).
KNOWN_EVENT_TYPES = frozenset(
    {
        "connected",
        "task_created",
        "task_updated",
        "task_finished",
        "chunk",
        "auth_event",
        "tool_call_request",
        "tool_call_result",
        "sub_agent_trigger",
        "think",
        "analyze",
        "plan_updated",
        "task_compactization",
        "context_status",
        "agent_gateway_decision",
        "process_state_changed",
        "process_update",
        "gateway_steer_applied",
        "ask_user_questions",
        "sub_task_created",
        "sub_task_updated",
        "sub_task_finished",
        "invite_member",
        "member_invited",
        "ask_for_secret",
        "secret_saved",
        "live_surface_created",
        "inline_card",
    }
)

OTHER = "other"

#: Latency buckets from 1 ms to 30 s: "milliseconds" is the promise.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class LabelledChildren:
    """A labelled metric's child for each label set, looked up once: prometheus'
    ``labels()`` takes a lock and builds a key on every call, which on the
    per-event path was a measurable share of the CPU."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class BoundedLabel:
    """Maps open-ended values (event types, agent ids) onto a capped label set."""

    def __init__(self, known: Iterable[str] = (), *, extra_capacity: int = 32) -> None:
        self._allowed = set(known)
        self._extra_left = extra_capacity
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._allowed:
            return value
        with self._lock:
            if value in self._allowed:
                return value
            if self._extra_left > 0 and len(value) <= 64:
                self._extra_left -= 1
                self._allowed.add(value)
                return value
        return OTHER


class Metrics:
    """The bridge's metrics, registered on one registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, agent_ids: Iterable[str] = ()
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        agent_ids = tuple(agent_ids)
        self.event_type = BoundedLabel(KNOWN_EVENT_TYPES)
        # Agent ids are configured, so bounded; tasks found through user ids may
        # belong to other agents, which the cap folds into "other".
        self.agent_label = BoundedLabel(agent_ids, extra_capacity=16)
        r = self.registry

        self.build_info = Gauge(
            "xpander_bridge_build_info",
            "Always 1; the labels say which build runs.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.ready = Gauge(
            "xpander_bridge_ready",
            "1 when the bridge is ready (Kafka and the platform reachable, not halted).",
            registry=r,
        )

        # --- platform to Kafka ---
        self.sse_events_received = Counter(
            "xpander_bridge_sse_events_received_total",
            "SSE events read from task streams, by platform event type.",
            ["event_type"],
            registry=r,
        )
        self.envelopes_published = Counter(
            "xpander_bridge_envelopes_published_total",
            "Envelopes acknowledged by Kafka, by topic and event type.",
            ["topic", "event_type"],
            registry=r,
        )
        self.events_filtered = Counter(
            "xpander_bridge_events_filtered_total",
            "Events a routing rule filtered out on purpose, by event type.",
            ["event_type"],
            registry=r,
        )
        self.publish_errors = Counter(
            "xpander_bridge_publish_errors_total",
            "Failed Kafka sends (each is retried; this is not a loss), by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "xpander_bridge_publish_latency_seconds",
            "From an event's receipt by the bridge to the broker's acknowledgement.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "xpander_bridge_queue_depth",
            "Events waiting between the streams and Kafka.",
            registry=r,
        )
        self.queue_capacity = Gauge(
            "xpander_bridge_queue_capacity",
            "Capacity of the queue between the streams and Kafka.",
            registry=r,
        )
        self.active_streams = Gauge(
            "xpander_bridge_active_streams",
            "Task event streams currently connected.",
            registry=r,
        )
        self.tracked_tasks = Gauge(
            "xpander_bridge_tracked_tasks",
            "Non-terminal tasks the bridge follows (streamed or polled), by mode.",
            ["mode"],
            registry=r,
        )
        self.stream_reconnects = Counter(
            "xpander_bridge_stream_reconnects_total",
            "Stream reconnects, by reason.",
            ["reason"],
            registry=r,
        )
        self.resyncs = Counter(
            "xpander_bridge_resyncs_total",
            "Task status fetches after a reconnect, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.tasks_finished = Counter(
            "xpander_bridge_tasks_finished_total",
            "Tasks that reached a terminal status, by agent and status.",
            ["agent_id", "status"],
            registry=r,
        )
        self.tasks_dropped = Counter(
            "xpander_bridge_tasks_dropped_total",
            "Tasks no longer followed without a terminal status, by reason.",
            ["reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "xpander_bridge_dead_letters_total",
            "Records written to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.oversized_records = Counter(
            "xpander_bridge_oversized_records_total",
            "Envelopes over the size limit, published truncated with the body in the DLQ.",
            registry=r,
        )
        self.platform_requests = Counter(
            "xpander_bridge_platform_requests_total",
            "REST and stream requests to the platform, by endpoint and status class.",
            ["endpoint", "status_class"],
            registry=r,
        )

        # --- Kafka to platform ---
        self.reports_consumed = Counter(
            "xpander_bridge_reports_consumed_total",
            "Report and metrics messages read from Kafka, by kind.",
            ["kind"],
            registry=r,
        )
        self.reports_recorded = Counter(
            "xpander_bridge_reports_recorded_total",
            "Report and metrics messages finished, by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.report_retries = Counter(
            "xpander_bridge_report_retries_total",
            "Recording attempts that will be retried, by kind and reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.report_record_latency = Histogram(
            "xpander_bridge_report_record_seconds",
            "From reading a report to its recording on the platform.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reports_halted = Gauge(
            "xpander_bridge_reports_halted",
            "1 while report recording is halted because the platform refuses the credentials.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "xpander_bridge_consumer_lag",
            "Messages not yet consumed, by topic and partition.",
            ["topic", "partition"],
            registry=r,
        )

        # --- scale-out and resume ---
        self.owned_partitions = Gauge(
            "xpander_bridge_owned_partitions",
            "Coordination-topic partitions this replica owns (it streams their tasks).",
            registry=r,
        )
        self.coordination_partitions = Gauge(
            "xpander_bridge_coordination_partitions",
            "Partitions of the coordination topic (sum owned over replicas should equal it).",
            registry=r,
        )
        self.rebalances = Counter(
            "xpander_bridge_rebalances_total",
            "Ownership assignments received from the consumer group.",
            registry=r,
        )
        self.resumes = Counter(
            "xpander_bridge_resumes_total",
            "Tasks resumed from a checkpoint, by how.",
            ["kind"],
            registry=r,
        )
        self.checkpoint_lag = Gauge(
            "xpander_bridge_checkpoint_lag",
            "Envelopes acknowledged by Kafka but not yet covered by a written checkpoint.",
            registry=r,
        )

        # --- runtime ---
        self.gc_pause = Histogram(
            "xpander_bridge_gc_pause_seconds",
            "Event-loop pauses for Python's garbage collector, by generation.",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self._zero_fixed_labels(agent_ids)

    def _zero_fixed_labels(self, agent_ids: Iterable[str]) -> None:
        """Create every series with a label from a fixed set, at 0 (see the module doc)."""
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for reason in PUBLISH_ERROR_REASONS:
            self.publish_errors.labels(reason)
        for reason in RECONNECT_REASONS:
            self.stream_reconnects.labels(reason)
        for outcome in RESYNC_OUTCOMES:
            self.resyncs.labels(outcome)
        for reason in DROP_REASONS:
            self.tasks_dropped.labels(reason)
        for agent in dict.fromkeys(agent_ids):
            for status in TASK_END_STATUSES:
                self.tasks_finished.labels(self.agent_label(agent), status)
        for mode in TRACKING_MODES:
            self.tracked_tasks.labels(mode)
        for how in RESUME_KINDS:
            self.resumes.labels(how)
        for generation in GC_GENERATIONS:
            self.gc_pause.labels(generation)
        for kind in REPORT_KINDS:
            self.reports_consumed.labels(kind)
            for outcome in REPORT_OUTCOMES:
                self.reports_recorded.labels(kind, outcome)
            for reason in REPORT_RETRY_REASONS:
                self.report_retries.labels(kind, reason)
