"""Every metric the bridge exports, defined once.

Names are ``xpander_bridge_*``; counters end in ``_total``. Labels come from
fixed sets (event category, topic names from config, status, reason): never a
task id, never error text. The event type is the one open-ended label, so it
goes through ``BoundedLabel``: the types the platform is known to send, plus
the first few new ones, then ``other``.

Each fixed label set is a ``StrEnum`` below (its values are the words on the
wire), and a metric labelled from one is a ``ByLabel`` (or ``ByLabels``,
``ByOpenAndLabel``) accessor: ``metrics.dead_letters(DeadLetterReason.OVERSIZED)``
returns the child, so mypy rejects a word that is not in the set. The accessor
creates every child when ``Metrics`` is built, at 0: a series that first
appears already at 1 is invisible to ``rate()`` and ``increase()``, so without
this the first failure of a kind would never alert. Metrics with open but
bounded labels (event types, topics, agents, endpoints, tool names: at most
``TOOLS_PER_AGENT`` per agent, ``tool_label``) are ``LabelledChildren``.
Outside this module the code never calls ``.labels()``; a test checks.

A ``Metrics`` instance owns its registry, so several bridges can run in one
process (the tests do) without mixing their numbers. ``docs/METRICS.md`` lists
each metric; a test checks that list against this module.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable
from enum import StrEnum
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from bridge import __version__
from bridge.wire import EVENT_TYPES

__all__ = [
    "KNOWN_EVENT_TYPES",
    "OTHER",
    "TOOLS_PER_AGENT",
    "ActiveStatus",
    "ActivityFetchFailure",
    "ActivityOutcome",
    "BoundedLabel",
    "ByLabel",
    "ByLabels",
    "ByOpenAndLabel",
    "CommandKind",
    "CommandOutcome",
    "DeadLetterReason",
    "DropReason",
    "GcGeneration",
    "HintOutcome",
    "LabelledChildren",
    "ListingError",
    "Metrics",
    "PublishErrorReason",
    "ReconnectReason",
    "ReportKind",
    "ReportOutcome",
    "ReportRetryReason",
    "ResumeKind",
    "ResyncOutcome",
    "TaskEndStatus",
    "TokenKind",
    "TrackingMode",
]

# --- the fixed label sets (each created at 0 on start-up) --------------------


class DeadLetterReason(StrEnum):
    """``dead_letters_total{reason}``: why a record went to the dead-letter topic.

    Platform to Kafka: a frame that is not JSON, JSON without a ``type``, an
    envelope over the size limit (published truncated, body in the DLQ), a
    record the broker refused even truncated. Kafka to platform: a report that
    fails validation, a report the platform refused (4xx other than auth)."""

    INVALID_JSON = "invalid_json"
    NOT_AN_EVENT = "not_an_event"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL_ERROR = "internal_error"
    OVERSIZED = "oversized"
    INVALID_REPORT = "invalid_report"
    PLATFORM_REJECTED = "platform_rejected"
    INVALID_COMMAND = "invalid_command"
    COMMAND_REJECTED = "command_rejected"
    ACTIVITY_REJECTED = "activity_rejected"


class ActivityOutcome(StrEnum):
    """``activity_threads_total{outcome}``: how an ended task's activity was accounted for."""

    PUBLISHED = "published"  #: one record on the activity topic
    PUBLISHED_IN_PARTS = "published_in_parts"  #: ordered parts (over activity.max_part_bytes)
    REJECTED = "rejected"  #: the platform refused it for good: a dead-letter record


class ActivityFetchFailure(StrEnum):
    """``activity_fetch_failures_total{reason}``: a failed activity-log fetch."""

    UNAVAILABLE = "unavailable"  #: network, 5xx, timeout: retried
    RATE_LIMITED = "rate_limited"  #: 429: retried after Retry-After
    REFUSED = "refused"  #: 401/403: retried, the bridge reports not ready
    REJECTED = "rejected"  #: another 4xx (404 too), or not a JSON object: dead-lettered


class TransactionOutcome(StrEnum):
    """``transactions_total{outcome}``: how a Kafka transaction ended."""

    COMMITTED = "committed"
    ABORTED = "aborted"  #: its records are written again in the next one


class PublishErrorReason(StrEnum):
    """``publish_errors_total{reason}``: a failed Kafka send, by cause."""

    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    TOO_LARGE = "too_large"
    REFUSED = "refused"


class ReconnectReason(StrEnum):
    """``stream_reconnects_total{reason}``: why a task stream was reopened."""

    ENDED = "ended"
    NOT_FOUND = "not_found"
    AUTH = "auth"
    IDLE_TIMEOUT = "idle_timeout"
    SERVER_ERROR = "server_error"
    NETWORK = "network"
    RATE_LIMITED = "rate_limited"


class ResyncOutcome(StrEnum):
    """``resyncs_total{outcome}``: what the status fetch after a reconnect found."""

    TERMINAL = "terminal"
    RUNNING = "running"
    FAILED = "failed"


class HintOutcome(StrEnum):
    """``follow_hints_total{outcome}``: what the owner did with a follow note
    (``bridge.core.hint``) read from the coordination topic."""

    FOLLOWED = "followed"  #: the task streams now
    ALREADY = "already"  #: followed already, or not to follow (checkpoint, not owned)
    STALE = "stale"  #: older than the bound: a listing finds the task
    INVALID = "invalid"  #: not a note this version reads


class DropReason(StrEnum):
    """``tasks_dropped_total{reason}``: why a task stopped being followed unfinished."""

    NOT_FOUND = "not_found"


class ListingError(StrEnum):
    """``listing_errors_total{reason}``: why one agent's (or user's) task listing
    failed: the platform does not know the id, refuses the key, rate-limits,
    fails (5xx), does not answer in time, cannot be reached, or answers
    something that is not a task list."""

    NOT_FOUND = "not_found"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    NETWORK = "network"
    INVALID = "invalid"
    REJECTED = "rejected"


class TaskEndStatus(StrEnum):
    """``tasks_finished_total{status}``: the platform's terminal statuses
    (``bridge.wire.TERMINAL_STATUSES``; a test keeps the two equal)."""

    COMPLETED = "completed"
    FAILED = "failed"
    ERROR = "error"
    STOPPED = "stopped"


class ActiveStatus(StrEnum):
    """``agent_tasks{status}``: the platform's non-terminal statuses, the ones a
    followed task is counted under until it ends."""

    PENDING = "pending"
    EXECUTING = "executing"
    PAUSED = "paused"


class TokenKind(StrEnum):
    """``tokens_total{kind}``: the two counts of a Task's ``tokens``."""

    PROMPT = "prompt"
    COMPLETION = "completion"


class TrackingMode(StrEnum):
    """``tracked_tasks{mode}``: how a task is followed."""

    STREAM = "stream"
    POLL = "poll"


class ReportKind(StrEnum):
    """``reports_*{kind}``: the two Kafka-to-platform topics, and what their
    messages are (``bridge.transforms.reports`` parses each kind)."""

    REPORT = "report"
    METRICS = "metrics"


class ReportOutcome(StrEnum):
    """``reports_recorded_total{outcome}``: how a report or metrics message
    ended: recorded on the platform, written to the dead-letter topic, or
    skipped as a redelivery of one recorded moments ago."""

    RECORDED = "recorded"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"


class ReportRetryReason(StrEnum):
    """``report_retries_total{reason}``: why recording a report will be tried
    again: the platform refused the credentials (recording halts until they
    work), a 429, or no usable answer (timeout, network, 5xx)."""

    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class CommandKind(StrEnum):
    """``commands_*{kind}``: the task commands read from Kafka
    (``bridge.transforms.commands``); ``invalid`` is a message that is none."""

    CREATE = "create"
    UPDATE = "update"
    STOP = "stop"
    INVALID = "invalid"


class CommandOutcome(StrEnum):
    """``commands_total{outcome}``: the reply's outcome: done on the platform
    (``ok``), refused for good (``rejected``: invalid, an agent outside the
    allow-list, a 4xx; dead-lettered too), or ``failed`` (a platform answer the
    bridge cannot read)."""

    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


class ResumeKind(StrEnum):
    """``resumes_total{kind}``: how a task with a checkpoint was picked up again:
    reconnecting with ``Last-Event-ID`` (``by_id``), skipping the events a
    replaying server sends again (``replay_skip``), or, with neither, only
    fetching the task's status so no terminal state is missed (``resync``)."""

    BY_ID = "by_id"
    REPLAY_SKIP = "replay_skip"
    RESYNC = "resync"


class GcGeneration(StrEnum):
    """``gc_pause_seconds{generation}``: Python's three collector generations."""

    GEN0 = "0"
    GEN1 = "1"
    GEN2 = "2"


#: Event types the official client knows (``TaskUpdateEventType``).
KNOWN_EVENT_TYPES = EVENT_TYPES

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

#: Task durations (created to finished): from a second to a day.
#: Activity thread sizes: from 1 KiB to 64 MiB, by fours.
ACTIVITY_BYTES_BUCKETS = tuple(float(1024 * 4**n) for n in range(9))

TASK_DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)

#: Distinct tool names kept per agent label in ``tool_calls_total`` and
#: ``tool_errors_total``; further ones (and names over 64 characters) are ``other``.
TOOLS_PER_AGENT = 20


M = TypeVar("M", bound=MetricWrapperBase)
L = TypeVar("L", bound=StrEnum)
K = TypeVar("K", bound=StrEnum)


class _Accessor(Generic[M]):
    """What the accessors share: the metric itself (``metric``), for the code
    that reads it whole (the demo's summary). The bridge counts through
    ``__call__``; tests read through the registry's public API."""

    __slots__ = ("metric",)

    def __init__(self, metric: M) -> None:
        self.metric = metric


class ByLabel(_Accessor[M], Generic[L, M]):
    """A metric with one label from the fixed set ``L``: every child is created
    (at 0) here, and ``metric(member)`` is a dict lookup."""

    __slots__ = ("_children",)

    def __init__(self, metric: M, values: type[L]) -> None:
        super().__init__(metric)
        self._children: dict[L, M] = {member: metric.labels(member.value) for member in values}

    def __call__(self, member: L) -> M:
        return self._children[member]


class ByLabels(_Accessor[M], Generic[K, L, M]):
    """A metric with two labels from the fixed sets ``K`` and ``L`` (a kind and
    an outcome or reason): every pair is created (at 0) here."""

    __slots__ = ("_children",)

    def __init__(self, metric: M, first: type[K], second: type[L]) -> None:
        super().__init__(metric)
        self._children: dict[tuple[K, L], M] = {
            (a, b): metric.labels(a.value, b.value) for a in first for b in second
        }

    def __call__(self, first: K, second: L) -> M:
        return self._children[first, second]


class ByOpenAndLabel(_Accessor[M], Generic[L, M]):
    """A metric with an open but bounded first label (the caller caps it, e.g.
    with ``BoundedLabel``) and a second from the fixed set ``L``. The first
    values known up front get every second value at 0; others on first use."""

    __slots__ = ("_children",)

    def __init__(self, metric: M, values: type[L], known: Iterable[str] = ()) -> None:
        super().__init__(metric)
        self._children: dict[tuple[str, L], M] = {
            (first, member): metric.labels(first, member.value)
            for first in known
            for member in values
        }

    def __call__(self, first: str, member: L) -> M:
        child = self._children.get((first, member))
        if child is None:
            child = self._children[first, member] = self.metric.labels(first, member.value)
        return child


class LabelledChildren(_Accessor[M]):
    """A metric with open but bounded labels (event types, topics, endpoints),
    each child looked up once: prometheus' ``labels()`` takes a lock and builds
    a key on every call, which on the per-event path was a measurable share of
    the CPU."""

    __slots__ = ("_children",)

    def __init__(self, metric: M) -> None:
        super().__init__(metric)
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
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
        self,
        registry: CollectorRegistry | None = None,
        *,
        agent_ids: Iterable[str] = (),
        user_ids: Iterable[str] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        agent_ids = tuple(agent_ids)
        #: the listings discovery runs: configured, so a bounded label
        owners = tuple(dict.fromkeys((*agent_ids, *user_ids)))
        self.event_type = BoundedLabel(KNOWN_EVENT_TYPES)
        # Agent ids are configured, so bounded; tasks found through user ids may
        # belong to other agents, which the cap folds into "other".
        self.agent_label = BoundedLabel(agent_ids, extra_capacity=16)
        #: per agent label, the tool names admitted (``TOOLS_PER_AGENT``)
        self._tool_labels: dict[str, BoundedLabel] = {}
        self._tool_labels_lock = threading.Lock()
        known_agents = [self.agent_label(agent) for agent in dict.fromkeys(agent_ids)]
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
        self.sse_events_received = LabelledChildren(
            Counter(
                "xpander_bridge_sse_events_received_total",
                "SSE events read from task streams, by platform event type.",
                ["event_type"],
                registry=r,
            )
        )
        self.envelopes_published = LabelledChildren(
            Counter(
                "xpander_bridge_envelopes_published_total",
                "Envelopes acknowledged by Kafka, by topic and event type.",
                ["topic", "event_type"],
                registry=r,
            )
        )
        self.events_filtered = LabelledChildren(
            Counter(
                "xpander_bridge_events_filtered_total",
                "Events a routing rule filtered out on purpose, by event type.",
                ["event_type"],
                registry=r,
            )
        )
        self.publish_errors = ByLabel(
            Counter(
                "xpander_bridge_publish_errors_total",
                "Failed Kafka sends (each is retried; this is not a loss), by reason.",
                ["reason"],
                registry=r,
            ),
            PublishErrorReason,
        )
        self.transactions = ByLabel(
            Counter(
                "xpander_bridge_transactions_total",
                "Kafka transactions (kafka.transactions), by outcome. An aborted one is "
                "redone: its records are written again, nothing is lost.",
                ["outcome"],
                registry=r,
            ),
            TransactionOutcome,
        )
        self.publish_latency = Histogram(
            "xpander_bridge_publish_latency_seconds",
            "From an event's receipt by the bridge to the broker's acknowledgement.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.records_held = Gauge(
            "xpander_bridge_records_held",
            "Records Kafka refuses for good (too large, malformed), held unacknowledged: "
            "their tasks' checkpoints wait on them. Tried again every 30 s.",
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
        self.tracked_tasks = ByLabel(
            Gauge(
                "xpander_bridge_tracked_tasks",
                "Non-terminal tasks the bridge follows (streamed or polled), by mode.",
                ["mode"],
                registry=r,
            ),
            TrackingMode,
        )
        self.stream_reconnects = ByLabel(
            Counter(
                "xpander_bridge_stream_reconnects_total",
                "Stream reconnects, by reason.",
                ["reason"],
                registry=r,
            ),
            ReconnectReason,
        )
        self.resyncs = ByLabel(
            Counter(
                "xpander_bridge_resyncs_total",
                "Task status fetches after a reconnect, by outcome.",
                ["outcome"],
                registry=r,
            ),
            ResyncOutcome,
        )
        self.tasks_finished = ByOpenAndLabel(
            Counter(
                "xpander_bridge_tasks_finished_total",
                "Tasks that reached a terminal status, by agent and status.",
                ["agent_id", "status"],
                registry=r,
            ),
            TaskEndStatus,
            known_agents,
        )
        self._agent_metrics(r, known_agents)
        self._activity_metrics(r)
        self.worker_crashes = Counter(
            "xpander_bridge_worker_crashes_total",
            "Task workers that died of an unexpected error (a bug); each restarts at the next "
            "listing from its state, its sequence going on.",
            registry=r,
        )
        self.tasks_dropped = ByLabel(
            Counter(
                "xpander_bridge_tasks_dropped_total",
                "Tasks no longer followed without a terminal status, by reason.",
                ["reason"],
                registry=r,
            ),
            DropReason,
        )
        self.dead_letters = ByLabel(
            Counter(
                "xpander_bridge_dead_letters_total",
                "Records written to the dead-letter topic, by reason.",
                ["reason"],
                registry=r,
            ),
            DeadLetterReason,
        )
        self.oversized_records = Counter(
            "xpander_bridge_oversized_records_total",
            "Envelopes over the size limit, published truncated with the body in the DLQ.",
            registry=r,
        )
        self.listing_errors = ByOpenAndLabel(
            Counter(
                "xpander_bridge_listing_errors_total",
                "Failed task listings, by the agent or user listed and reason.",
                ["owner", "reason"],
                registry=r,
            ),
            ListingError,
            known=owners,
        )
        self.listing_failing = LabelledChildren(
            Gauge(
                "xpander_bridge_listing_failing",
                "1 while the task listing of this agent or user keeps failing "
                "(it backs off on its own; the other listings go on).",
                ["owner"],
                registry=r,
            )
        )
        for owner in owners:
            self.listing_failing(owner).set(0)
        self.platform_requests = LabelledChildren(
            Counter(
                "xpander_bridge_platform_requests_total",
                "REST and stream requests to the platform, by endpoint and status class.",
                ["endpoint", "status_class"],
                registry=r,
            )
        )

        # --- Kafka to platform ---
        self.reports_consumed = ByLabel(
            Counter(
                "xpander_bridge_reports_consumed_total",
                "Report and metrics messages read from Kafka, by kind.",
                ["kind"],
                registry=r,
            ),
            ReportKind,
        )
        self.reports_recorded = ByLabels(
            Counter(
                "xpander_bridge_reports_recorded_total",
                "Report and metrics messages finished, by kind and outcome.",
                ["kind", "outcome"],
                registry=r,
            ),
            ReportKind,
            ReportOutcome,
        )
        self.report_retries = ByLabels(
            Counter(
                "xpander_bridge_report_retries_total",
                "Recording attempts that will be retried, by kind and reason.",
                ["kind", "reason"],
                registry=r,
            ),
            ReportKind,
            ReportRetryReason,
        )
        self.report_record_latency = Histogram(
            "xpander_bridge_report_record_seconds",
            "From reading a report to its recording on the platform.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._define_commands(r)
        self.reports_halted = Gauge(
            "xpander_bridge_reports_halted",
            "1 while report recording is halted because the platform refuses the credentials.",
            registry=r,
        )
        self.consumer_lag = LabelledChildren(
            Gauge(
                "xpander_bridge_consumer_lag",
                "Messages not yet consumed, by topic and partition.",
                ["topic", "partition"],
                registry=r,
            )
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
        self.follow_hints = ByLabel(
            Counter(
                "xpander_bridge_follow_hints_total",
                "Follow notes (tasks created by commands) read by the owner of their "
                "partition, by what it did.",
                ["outcome"],
                registry=r,
            ),
            HintOutcome,
        )
        self.resumes = ByLabel(
            Counter(
                "xpander_bridge_resumes_total",
                "Tasks resumed from a checkpoint, by how.",
                ["kind"],
                registry=r,
            ),
            ResumeKind,
        )
        self.checkpoint_lag = Gauge(
            "xpander_bridge_checkpoint_lag",
            "Envelopes acknowledged by Kafka but not yet covered by a written checkpoint.",
            registry=r,
        )

        self._runtime_metrics(r)

    def _runtime_metrics(self, r: CollectorRegistry) -> None:
        """The Python process: its event loop and garbage collector."""
        self.event_loop_lag = Histogram(
            "xpander_bridge_event_loop_lag_seconds",
            "How late the event loop ran a timer, sampled every 20 ms: time every callback "
            "(an event read included) waits behind the others; high means the CPU is saturated.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_pause = ByLabel(
            Histogram(
                "xpander_bridge_gc_pause_seconds",
                "Event-loop pauses for Python's garbage collector, by generation.",
                ["generation"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            GcGeneration,
        )

    def _define_commands(self, r: CollectorRegistry) -> None:
        """Task commands from Kafka (``docs/COMMANDS.md``)."""
        self.commands = ByLabels(
            Counter(
                "xpander_bridge_commands_total",
                "Task commands finished (their reply published), by kind and outcome.",
                ["kind", "outcome"],
                registry=r,
            ),
            CommandKind,
            CommandOutcome,
        )
        self.command_latency = Histogram(
            "xpander_bridge_command_seconds",
            "From reading a task command to its platform call's answer.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.command_rate_wait = Counter(
            "xpander_bridge_command_rate_limit_wait_seconds_total",
            "Seconds creates waited for the commands.create_rate_per_s token bucket.",
            registry=r,
        )
        self.command_retries = ByLabel(
            Counter(
                "xpander_bridge_command_retries_total",
                "Platform calls of task commands that will be retried, by reason.",
                ["reason"],
                registry=r,
            ),
            ReportRetryReason,
        )
        self.commands_halted = Gauge(
            "xpander_bridge_commands_halted",
            "1 while task commands are halted because the platform refuses the credentials.",
            registry=r,
        )

    def _activity_metrics(self, r: CollectorRegistry) -> None:
        """The activity topic (``bridge.sources.platform.activity``)."""
        self.activity_threads = ByLabel(
            Counter(
                "xpander_bridge_activity_threads_total",
                "Ended tasks' activity threads written to Kafka, by outcome (a thread in "
                "parts counts once).",
                ["outcome"],
                registry=r,
            ),
            ActivityOutcome,
        )
        self.activity_fetch_failures = ByLabel(
            Counter(
                "xpander_bridge_activity_fetch_failures_total",
                "Failed activity-log fetches, by reason (all but rejected are retried).",
                ["reason"],
                registry=r,
            ),
            ActivityFetchFailure,
        )
        self.activity_fetch_latency = Histogram(
            "xpander_bridge_activity_fetch_seconds",
            "One activity-log fetch, request to parsed answer (failed ones too).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.activity_fetches_waiting = Gauge(
            "xpander_bridge_activity_fetches_waiting",
            "Ended tasks whose activity-log fetch waits its turn: at most "
            "activity.max_concurrent_fetches at once, one while the bridge is behind.",
            registry=r,
        )
        self.activity_bytes = Histogram(
            "xpander_bridge_activity_bytes",
            "Size of each fetched activity thread, as the platform sent it.",
            buckets=ACTIVITY_BYTES_BUCKETS,
            registry=r,
        )

    def _agent_metrics(self, r: CollectorRegistry, known_agents: list[str]) -> None:
        """Per agent (``bridge.transforms.agent_stats`` counts them), the agent
        label bounded as for ``tasks_finished``: each replica counts the tasks
        it follows, the fleet's figure is the sum (or max) over replicas."""
        self.task_duration = ByOpenAndLabel(
            Histogram(
                "xpander_bridge_task_duration_seconds",
                "From a task's created_at to its finished_at, by agent and terminal status.",
                ["agent_id", "status"],
                buckets=TASK_DURATION_BUCKETS,
                registry=r,
            ),
            TaskEndStatus,
            known_agents,
        )
        self.tokens = ByOpenAndLabel(
            Counter(
                "xpander_bridge_tokens_total",
                "LLM tokens of the tasks followed (growth of each Task's tokens), by agent "
                "and kind.",
                ["agent_id", "kind"],
                registry=r,
            ),
            TokenKind,
            known_agents,
        )
        self.tool_calls = LabelledChildren(
            Counter(
                "xpander_bridge_tool_calls_total",
                "Tool calls that returned (tool_call_result), by agent and tool (capped).",
                ["agent_id", "tool"],
                registry=r,
            )
        )
        self.tool_errors = LabelledChildren(
            Counter(
                "xpander_bridge_tool_errors_total",
                "Tool calls whose result is an error (is_error), by agent and tool (capped).",
                ["agent_id", "tool"],
                registry=r,
            )
        )
        self.agent_tasks = ByOpenAndLabel(
            Gauge(
                "xpander_bridge_agent_tasks",
                "Unfinished tasks this replica follows, by agent and status.",
                ["agent_id", "status"],
                registry=r,
            ),
            ActiveStatus,
            known_agents,
        )
        self.oldest_paused_task = LabelledChildren(
            Gauge(
                "xpander_bridge_oldest_paused_task_seconds",
                "Age of the oldest paused task this replica follows (0: none), by agent.",
                ["agent_id"],
                registry=r,
            )
        )
        for agent in known_agents:
            self.oldest_paused_task(agent).set(0)

    def tool_label(self, agent: str, tool: str) -> str:
        """``tool`` as a label under agent label ``agent``: the first
        ``TOOLS_PER_AGENT`` names of each agent, then ``other``."""
        bounded = self._tool_labels.get(agent)
        if bounded is None:
            with self._tool_labels_lock:
                bounded = self._tool_labels.setdefault(
                    agent, BoundedLabel(extra_capacity=TOOLS_PER_AGENT)
                )
        return bounded(tool)
