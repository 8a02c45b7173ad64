"""Every metric the bridge exports, defined once.

Names are ``xpander_bridge_*``; counters end in ``_total``. Labels come from
fixed sets (event category, topic names from config, status, reason): never a
task id, never error text. The event type is the one open-ended label, so it
goes through ``BoundedLabel``: the types the platform is known to send, plus
the first few new ones, then ``other``.

A ``Metrics`` instance owns its registry, so several bridges can run in one
process (the tests do) without mixing their numbers. ``docs/METRICS.md`` lists
each metric; a test checks that list against this module.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge import __version__

__all__ = ["KNOWN_EVENT_TYPES", "BoundedLabel", "Metrics"]

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
