"""The daemon's configuration: one pydantic model tree, loaded from YAML and
overridden by the environment.

Precedence, lowest first: model defaults, the YAML file, then environment
variables. Two families of variables are read:

* the names operators and Kubernetes already use (``XPANDER_API_KEY``,
  ``KAFKA_BOOTSTRAP_SERVERS``, ...; see ``ENV_ALIASES``), which work alone with
  no file at all;
* ``XPANDER_BRIDGE_<SECTION>__<FIELD>`` for every other field, e.g.
  ``XPANDER_BRIDGE_KAFKA__ENABLE_IDEMPOTENCE=false``. An unknown variable of this
  form is an error: a typo must not be silently ignored.

Secrets (``SecretStr`` fields) are never read from the YAML file: they come
from the environment, or from a file named by ``<VAR>_FILE`` (a mounted
Kubernetes secret) or by the ``<field>_file`` setting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from bridge.errors import ConfigError
from bridge.wire import derive_events_base

__all__ = [
    "ENV_ALIASES",
    "ENV_PREFIX",
    "BridgeConfig",
    "load_config",
]

ENV_PREFIX = "XPANDER_BRIDGE_"
ENV_NESTING = "__"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: Path, field: str) -> SecretStr:
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read the secret file for {field}: {exc.strerror}") from exc


class PlatformConfig(Section):
    """Where the xpander platform is and how to authenticate."""

    base_url: str = Field(
        default="https://inbound.xpander.ai",
        description="REST base URL of the xpander API (env XPANDER_BASE_URL).",
    )
    events_url: str | None = Field(
        default=None,
        description=(
            "Base URL of the task event streams (env XPANDER_EVENTS_URL). Empty: derived "
            "from base_url exactly as the official client derives it."
        ),
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="API key sent as x-api-key (env XPANDER_API_KEY or XPANDER_API_KEY_FILE).",
    )
    api_key_file: Path | None = Field(
        default=None, description="File holding the API key, e.g. a mounted Kubernetes secret."
    )
    organization_id: str | None = Field(
        default=None, description="Organization id (env XPANDER_ORGANIZATION_ID)."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of one REST request, in seconds."
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline to open one connection, in seconds."
    )
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest REST answer read (a listing of every task of an agent is the largest); "
            "a larger one is refused unread past the limit, counted as an invalid listing."
        ),
    )
    rest_connections: int = Field(
        default=8,
        ge=1,
        description=(
            "Concurrent REST calls (listings, status fetches, reports) and their connections; "
            "streams have their own pool of streams.max_concurrent."
        ),
    )

    @model_validator(mode="after")
    def _load_key_file(self) -> PlatformConfig:
        if self.api_key is None and self.api_key_file is not None:
            object.__setattr__(
                self, "api_key", _read_secret_file(self.api_key_file, "platform.api_key")
            )
        return self

    @property
    def events_base(self) -> str:
        """The event-stream base URL, explicit or derived."""
        return (self.events_url or derive_events_base(self.base_url)).rstrip("/")


class DiscoveryConfig(Section):
    """Which tasks to follow, and how often to look for new ones."""

    agent_ids: list[str] = Field(
        default_factory=list,
        description=(
            "Agents whose tasks are streamed (env XPANDER_BRIDGE_AGENT_IDS, comma-separated)."
        ),
    )
    user_ids: list[str] = Field(
        default_factory=list, description="Users whose tasks (across agents) are streamed too."
    )
    interval_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Seconds between two listings of each agent's (and user's) live tasks: one "
            "request per non-terminal status (pending, executing, paused), through the "
            "listing's `status` filter, so its cost follows the live tasks, not the history. "
            "A new task's first event reaches Kafka within about this (times 1 + jitter), "
            "plus the opening of its stream. Stretched to keep within "
            "max_listing_requests_per_s."
        ),
    )
    max_listing_requests_per_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Most live-listing requests a second, all agents and users together (three a "
            "listing): with many of them the live interval stretches to 3 x listings / this, "
            "so the platform's load is bounded whatever the number of agents."
        ),
    )
    full_interval_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Least seconds between two full listings (every task, history included) of each "
            "agent and user; null = 12 x interval_s. A full listing finds the tasks that "
            "started and ended between two live listings and publishes their events (read "
            "from the start of their streams) and their end. The first listing and the one "
            "after a wake are always full. Stretched by the history: a listing's next full one "
            "waits until its live listings have listed as many tasks as its last full one "
            "did (at least 100 a round counted), so full listings cost at most what live "
            "ones do; never beyond full_interval_max_s. At or below interval_s every listing "
            "is full (the cost then grows with the history)."
        ),
    )
    full_interval_max_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Most seconds between two full listings however long the history: the worst "
            "delay of a task that started and ended between two live listings (times 1 + "
            "jitter, plus the listing itself)."
        ),
    )
    jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description=(
            "Random spread of the interval, as a fraction, so replicas do not list in step."
        ),
    )
    poll_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between status polls of a task that has no event stream.",
    )
    max_concurrent_listings: int = Field(
        default=4,
        ge=1,
        description=(
            "Listings (one per agent and user) fetched at once. Each fails, backs off and "
            "recovers on its own: one agent the platform refuses never delays the others."
        ),
    )

    @property
    def full_listing_interval_s(self) -> float:
        """``full_interval_s``, or its default: a full listing every 12 live ones."""
        if self.full_interval_s is not None:
            return self.full_interval_s
        return 12 * self.interval_s


class StreamsConfig(Section):
    """The platform-to-Kafka direction: one SSE stream per active task."""

    enabled: bool = Field(default=True, description="Run the platform-to-Kafka direction.")
    max_concurrent: int = Field(
        default=10_000, ge=1, description="Most streams open at once; the rest wait their turn."
    )
    connect_concurrency: int = Field(
        default=128,
        ge=1,
        description=(
            "Most streams connecting at once (request sent, headers not yet back). Opening "
            "thousands together floods the event loop and delays the events of the streams "
            "already open."
        ),
    )
    idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A stream with no bytes (comments included) for this long is reconnected.",
    )
    max_frame_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=4096,
        description=(
            "Largest SSE event (its data) the bridge reads. A larger one is skipped as it "
            "arrives, never held in memory, and a small dead-letter record names its task, SSE "
            "id and size and holds its first 4 KiB; the stream goes on. This is also the most "
            "one stream can buffer: 8 MiB carries any real tool result (and splits over "
            "kafka.max_request_bytes go to the DLQ in parts) while 1,000 streams in the worst "
            "case stay within 8 GiB."
        ),
    )
    reconnect_initial_s: float = Field(
        default=0.5, gt=0, description="First reconnect back-off; it doubles up to the cap."
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, description="Cap of the reconnect back-off (full jitter below it)."
    )
    publish_connected: bool = Field(
        default=False,
        description=(
            "Publish the `connected` handshake a server sends on every connection. Off: it "
            "is not task activity, and numbering it would shift `sequence` after a resume "
            "(counted in events_filtered_total)."
        ),
    )
    resync_grace_s: float = Field(
        default=2.0,
        ge=0,
        description=(
            "After a reconnect to a task that has ended, how long the stream may stay silent "
            "before the bridge emits task_finished from the task's status (counted from its "
            "last event: a replay still flowing is read to its end)."
        ),
    )
    quiet_check_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "A stream that delivered no event (keep-alive comments do not count) for this long "
            "gets a status check; if the task has ended, its end is published and the stream "
            "closed. Costs at most one status call per quiet stream per period."
        ),
    )


class KafkaConfig(Section):
    """The Kafka cluster and the producer/consumer settings."""

    bootstrap_servers: list[str] = Field(
        default_factory=lambda: ["localhost:9092"],
        description="Brokers to bootstrap from (env KAFKA_BOOTSTRAP_SERVERS, comma-separated).",
    )
    client_id: str = Field(default="xpander-bridge", description="Kafka client.id.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How to talk to the brokers."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password (env XPANDER_BRIDGE_KAFKA__SASL_PASSWORD or ..._FILE).",
    )
    sasl_password_file: Path | None = Field(
        default=None, description="File holding the SASL password."
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify brokers.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key (mTLS).")
    acks: Literal["all", "1", "0"] = Field(
        default="all",
        description="Producer acks. 'all' is what at-least-once needs; lower it only knowingly.",
    )
    enable_idempotence: bool = Field(
        default=True,
        description=(
            "Idempotent producer: no duplicates or reordering from producer retries. "
            "Implied by kafka.transactions."
        ),
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="Producer compression codec."
    )
    linger_ms: int = Field(
        default=5, ge=0, description="Producer batching delay; trades latency for throughput."
    )
    max_batch_bytes: int = Field(
        default=262_144, ge=1024, description="Producer batch size per partition, in bytes."
    )
    max_request_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest record the producer sends; larger ones take the oversized path.",
    )
    request_timeout_ms: int = Field(
        default=30_000, ge=1000, description="Broker request deadline before a batch is retried."
    )
    transactions: bool = Field(
        default=True,
        description=(
            "Exactly-once: envelopes and the checkpoints that cover them are committed "
            "together in Kafka transactions (consumers read with isolation.level="
            "read_committed). false for brokers without transactions: at-least-once then."
        ),
    )
    transactional_id: str | None = Field(
        default=None,
        description=(
            "The producer's transactional.id; default '<client_id>-<coordination.instance_id "
            "or host name>'. Stable per replica slot and unique among replicas: a restarted "
            "replica fences its predecessor's unfinished transaction. With "
            "transaction_pipeline, the second producer has this id followed by '#2' (a "
            "prefixed ACL on the id covers both)."
        ),
    )
    transaction_interval_ms: int = Field(
        default=20,
        ge=1,
        le=60_000,
        description=(
            "Most time a record waits, from when it came in, for its transaction to start "
            "committing (sooner when the queue is idle for linger_ms; records that queued "
            "while the previous transaction committed go at once): latency for "
            "read_committed consumers against commits (and their markers) per second. 20 ms "
            "from measurements (bench/README.md)."
        ),
    )
    transaction_pipeline: bool = Field(
        default=False,
        description=(
            "Two transactional producers taking turns: the next transaction is written "
            "while the one before it commits (commits stay in order, an abort of one redoes "
            "both), so a record waits for one transaction's round trips instead of two. For "
            "Apache Kafka and brokers that expose a committed transaction while a later one "
            "is open; not for tansu, whose read_committed readers then wait until no "
            "transaction is open (docs/notes/pipelined-transactions.md). Turning it off "
            "leaves the second producer's last transaction to the broker's "
            "transaction_timeout_ms, like a replica that died."
        ),
    )
    transaction_max_records: int = Field(
        default=5000,
        ge=1,
        description="Records after which a transaction commits even before its interval.",
    )
    transaction_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        le=900_000,
        description=(
            "transaction.timeout.ms: how long the broker keeps the transaction of a replica "
            "that died open (read_committed consumers of its partitions wait that long) "
            "before aborting it."
        ),
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaConfig:
        if self.sasl_password is None and self.sasl_password_file is not None:
            object.__setattr__(
                self,
                "sasl_password",
                _read_secret_file(self.sasl_password_file, "kafka.sasl_password"),
            )
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError("kafka.sasl_mechanism is required when security_protocol is SASL_*")
        return self


class RouteRule(Section):
    """Send the events of some types elsewhere, or filter them out."""

    types: list[str] = Field(min_length=1, description="Platform event types this rule matches.")
    topic: str | None = Field(
        default=None, description="Topic for the matched events (instead of topics.events)."
    )
    drop: bool = Field(
        default=False, description="Filter the matched events out (counted as filtered)."
    )

    @model_validator(mode="after")
    def _one_action(self) -> RouteRule:
        if self.drop == (self.topic is not None):
            raise ValueError("a route needs exactly one of 'topic' or 'drop: true'")
        return self


class TopicsConfig(Section):
    """Topic names, and how to create them when missing."""

    events: str = Field(
        default="xpander.task.events", description="Every envelope, keyed by task id."
    )
    state: str = Field(
        default="xpander.task.state",
        description="Compacted: the latest task snapshot per task id.",
    )
    dlq: str = Field(
        default="xpander.bridge.dlq",
        description="Dead letters: raw input with the reason in headers.",
    )
    activity: str = Field(
        default="xpander.task.activity",
        description="Each ended task's activity thread (activity.enabled), keyed by task id.",
    )
    create: bool = Field(
        default=True, description="Create missing topics at start-up (else only verify them)."
    )
    partitions: int = Field(
        default=12, ge=1, description="Partitions of topics the bridge creates."
    )
    replication_factor: int = Field(
        default=-1,
        description="Replication of topics the bridge creates; -1 takes the broker default.",
    )
    routes: list[RouteRule] = Field(
        default_factory=list, description="Routing rules by event type, first match wins."
    )


class ActivityConfig(Section):
    """The activity topic: each ended task's whole thread, fetched once it ends."""

    enabled: bool = Field(
        default=True,
        description="Fetch each ended task's activity log and publish it to topics.activity.",
    )
    exclude_agent_ids: list[str] = Field(
        default_factory=list,
        description="Agents whose tasks' activity is not fetched nor published (opt-out).",
    )
    max_concurrent_fetches: int = Field(
        default=4,
        ge=1,
        description="Most activity logs fetched at once. When thousands of tasks end together "
        "their fetches wait their turn (FIFO) instead of taking every REST slot "
        "(platform.rest_connections) and the CPU from the events of the tasks still running; "
        "threads arrive later instead.",
    )
    busy_loop_lag_ms: float = Field(
        default=10.0,
        ge=0,
        description="More than one activity fetch runs at a time only while the event loop "
        "has run its timers at most this late for a second "
        "(xpander_bridge_event_loop_lag_seconds): over it the CPU is saturated, and fetches go "
        "one at a time.",
    )
    busy_queue_wait_ms: float = Field(
        default=500.0,
        gt=0,
        description="Fetches also go one at a time while the record first in the delivery queue "
        "has waited longer than this: events are behind (with transactions they wait there for "
        "their transaction while the event loop keeps time).",
    )
    max_part_bytes: int = Field(
        default=524_288,
        ge=4096,
        description="Largest activity record; a larger thread is published in ordered parts "
        "of at most this size (kept under kafka.max_request_bytes, with room for batching).",
    )


class ReportsConfig(Section):
    """The Kafka-to-platform direction: external task reports and metrics."""

    enabled: bool = Field(default=True, description="Run the Kafka-to-platform direction.")
    reports_topic: str = Field(
        default="xpander.task.reports", description="External task runs to record."
    )
    metrics_topic: str = Field(
        default="xpander.task.metrics", description="Execution metrics to record."
    )
    group_id: str = Field(
        default="xpander-bridge-reports", description="Consumer group of the report consumers."
    )
    max_in_flight_per_partition: int = Field(
        default=8, ge=1, description="Concurrent recordings per partition (order kept per key)."
    )
    retry_initial_s: float = Field(default=0.5, gt=0, description="First retry back-off.")
    retry_max_s: float = Field(default=30.0, gt=0, description="Cap of the retry back-off.")
    commit_interval_s: float = Field(
        default=0.5, gt=0, description="Most time between two offset commits while working."
    )
    dedupe_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Recently recorded task ids remembered to skip a redelivered duplicate.",
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="Consumer group session timeout."
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, description="Consumer group heartbeat interval."
    )
    rebalance_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "On a rebalance, how long in-flight recordings of revoked partitions may take to "
            "finish before they are abandoned (the new owner records them again)."
        ),
    )


class CoordinationConfig(Section):
    """Many replicas: task ownership and checkpoints, on Kafka alone."""

    enabled: bool = Field(
        default=True,
        description=(
            "Own tasks through a consumer group and keep checkpoints in Kafka (needed for "
            "replicas above 1 and to resume after a restart)."
        ),
    )
    tasks_topic: str = Field(
        default="xpander.bridge.tasks",
        description="Coordination topic (compacted, key = task id): its partitions are owned.",
    )
    checkpoints_topic: str = Field(
        default="xpander.bridge.checkpoints",
        description="Compacted topic of per-task checkpoints, co-partitioned with tasks_topic.",
    )
    partitions: int = Field(
        default=24,
        ge=1,
        description=(
            "Partitions of both coordination topics: the most replicas that share the work. "
            "Fixed once created."
        ),
    )
    group_id: str = Field(
        default="xpander-bridge-owners", description="Consumer group of the owners."
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="A replica silent this long loses its tasks to the others.",
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, description="Group heartbeat interval."
    )
    checkpoint_interval_s: float = Field(
        default=1.0, gt=0, description="Most time between a task's progress and its checkpoint."
    )
    checkpoint_retention_s: float = Field(
        default=3600.0,
        ge=0,
        description="How long a finished task's checkpoint is kept before its tombstone.",
    )
    instance_id: str | None = Field(
        default=None,
        description=(
            "This replica's name (default: the host name): in its 'bridge started' log line "
            "and in the client id of its coordination consumer, so the consumer group's "
            "description shows which replica owns which partitions."
        ),
    )


class PipelineConfig(Section):
    """The queue between sources and sinks, and shutdown."""

    queue_capacity: int = Field(
        default=10_000,
        ge=1,
        description="Events buffered between streams and Kafka; when full, streams stop reading.",
    )
    queue_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description=(
            "Bytes of envelopes buffered between streams and Kafka; when reached, streams "
            "stop reading (the memory bound the record count alone is not)."
        ),
    )
    shutdown_timeout_s: float = Field(
        default=25.0,
        gt=0,
        description="Deadline to drain and flush on SIGTERM (keep under the pod's grace period).",
    )
    gc_freeze_interval_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "Seconds between moves of long-lived objects out of the garbage collector's "
            "reach (gc.freeze), so a full collection does not walk every open stream's "
            "state and pause the loop (docs/OPERATIONS.md). 0: Python's default behaviour."
        ),
    )
    gc_full_interval_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Seconds between full collections that include the frozen objects, "
            "reclaiming reference cycles among them (one pause per interval)."
        ),
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description=(
            "The event loop the bridge runs on: uvloop (libuv; less CPU per event "
            "with thousands of streams, bench/README.md) or Python's own asyncio loop."
        ),
    )


class HttpConfig(Section):
    """The metrics, liveness and readiness endpoint."""

    enabled: bool = Field(default=True, description="Serve /metrics, /livez and /readyz.")
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(
        default=8080, ge=0, le=65535, description="Port (env XPANDER_BRIDGE_HTTP_PORT)."
    )


class LoggingConfig(Section):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level written."
    )
    format: Literal["json", "text", "auto"] = Field(
        default="auto",
        description="json: one object per line; text: for people; auto: text on a terminal.",
    )


class CommandsConfig(Section):
    """Task commands from Kafka: create, update and stop tasks, with replies
    (``docs/COMMANDS.md``). Off until enabled."""

    enabled: bool = Field(default=False, description="Run task commands from Kafka.")
    commands_topic: str = Field(
        default="xpander.task.commands", description="Commands: create, update, stop."
    )
    results_topic: str = Field(
        default="xpander.task.command-results",
        description="Replies, keyed by command_id (a kafka_replyTopic header overrides it).",
    )
    reply_topics: list[str] = Field(
        default_factory=list,
        description=(
            "Topics a command's kafka_replyTopic header may name besides results_topic (they "
            "must exist: a send to a missing topic would hold the delivery of everything)."
        ),
    )
    group_id: str = Field(
        default="xpander-bridge-commands", description="Consumer group of the command consumers."
    )
    agent_ids: list[str] | None = Field(
        default=None,
        description="Agents commands may address; unset: discovery.agent_ids.",
    )
    create_rate_per_s: float = Field(
        default=20.0, gt=0, description="Token bucket: creates per second (waits, never drops)."
    )
    create_burst: int = Field(default=20, ge=1, description="Token bucket: burst of creates.")
    id_namespace: str = Field(
        default="8f4e2c7a-3b1d-4f6e-9c2a-7d5b1e0f3a64",
        description="UUID namespace of task ids derived from command ids (uuid5).",
    )
    max_in_flight_per_partition: int = Field(
        default=8, ge=1, description="Concurrent commands per partition (order kept per key)."
    )
    retry_initial_s: float = Field(default=0.5, gt=0, description="First retry back-off.")
    retry_max_s: float = Field(default=30.0, gt=0, description="Cap of the retry back-off.")
    commit_interval_s: float = Field(
        default=0.5, gt=0, description="Most time between two offset commits while working."
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="Consumer group session timeout."
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, description="Consumer group heartbeat interval."
    )
    rebalance_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "On a rebalance, how long in-flight commands of revoked partitions may take to "
            "finish before they are abandoned (the new owner runs them again, idempotently)."
        ),
    )


class BridgeConfig(Section):
    """Everything the daemon reads at start-up."""

    platform: PlatformConfig = Field(default_factory=PlatformConfig, description="The platform.")
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig, description="Finding tasks."
    )
    streams: StreamsConfig = Field(default_factory=StreamsConfig, description="Task streams.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka.")
    topics: TopicsConfig = Field(default_factory=TopicsConfig, description="Topics.")
    reports: ReportsConfig = Field(default_factory=ReportsConfig, description="Reports.")
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig, description="Task commands from Kafka."
    )
    activity: ActivityConfig = Field(
        default_factory=ActivityConfig, description="Activity threads of ended tasks."
    )
    coordination: CoordinationConfig = Field(
        default_factory=CoordinationConfig, description="Replicas and checkpoints."
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Pipeline.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP endpoint.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")

    def missing_for_run(self) -> list[str]:
        """Settings ``run`` needs that are not set, each as one sentence."""
        missing = []
        if self.platform.api_key is None:
            missing.append("platform.api_key: set XPANDER_API_KEY or XPANDER_API_KEY_FILE")
        if not self.platform.organization_id:
            missing.append("platform.organization_id: set XPANDER_ORGANIZATION_ID")
        if self.streams.enabled and not (self.discovery.agent_ids or self.discovery.user_ids):
            missing.append(
                "discovery.agent_ids: set XPANDER_BRIDGE_AGENT_IDS (or discovery.user_ids)"
            )
        return missing

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets replaced by '**********'."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


# --- loading -----------------------------------------------------------------

#: Environment names that work on their own, mapped to their field path.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "XPANDER_BASE_URL": ("platform", "base_url"),
    "XPANDER_EVENTS_URL": ("platform", "events_url"),
    "XPANDER_API_KEY": ("platform", "api_key"),
    "XPANDER_ORGANIZATION_ID": ("platform", "organization_id"),
    "XPANDER_BRIDGE_AGENT_IDS": ("discovery", "agent_ids"),
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "XPANDER_BRIDGE_HTTP_PORT": ("http", "port"),
}

_SECRET_PATHS = {
    ("platform", "api_key"),
    ("kafka", "sasl_password"),
}


def _sections() -> dict[str, type[Section]]:
    sections: dict[str, type[Section]] = {}
    for name, field in BridgeConfig.model_fields.items():
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, Section)
        sections[name] = annotation
    return sections


def _is_list_field(section: str, field: str) -> bool:
    annotation = _sections()[section].model_fields[field].annotation
    return getattr(annotation, "__origin__", None) is list


def _env_value(section: str, field: str, raw: str) -> Any:
    """Environment values are strings; lists are comma-separated or JSON."""
    if _is_list_field(section, field):
        stripped = raw.strip()
        if stripped.startswith("["):
            try:
                return orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return stripped  # let the model name the field in its error
        return [item.strip() for item in stripped.split(",") if item.strip()]
    return raw


def _env_overrides(environ: Mapping[str, str]) -> Iterator[tuple[str, str, Any, str]]:
    """Yield (section, field, value, variable name) for every override in the environment."""
    sections = _sections()
    for name, (section, field) in ENV_ALIASES.items():
        if name in environ:
            yield section, field, _env_value(section, field, environ[name]), name
        file_var = f"{name}_FILE"
        if (section, field) in _SECRET_PATHS and file_var in environ:
            yield section, f"{field}_file", environ[file_var], file_var
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or ENV_NESTING not in name:
            continue
        section_part, _, field_part = name[len(ENV_PREFIX) :].partition(ENV_NESTING)
        section, field = section_part.lower(), field_part.lower()
        is_file = False
        if section in sections and field.endswith("_file"):
            base = field[: -len("_file")]
            if (section, base) in _SECRET_PATHS:
                field, is_file = f"{base}_file", True
        if section not in sections or field not in sections[section].model_fields:
            raise ConfigError(
                f"{name}: no such setting (expected {ENV_PREFIX}<SECTION>{ENV_NESTING}<FIELD>, "
                f"sections: {', '.join(sorted(sections))})",
                field=name,
            )
        value = raw if is_file else _env_value(section, field, raw)
        yield section, field, value, name


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for section, field in _SECRET_PATHS:
        block = data.get(section)
        if isinstance(block, dict) and block.get(field) is not None:
            raise ConfigError(
                f"{section}.{field}: secrets are not read from the config file; "
                f"use the environment or {section}.{field}_file",
                field=f"{section}.{field}",
            )
    return data


def _format_validation_error(exc: ValidationError, sources: dict[tuple[str, ...], str]) -> str:
    parts = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        where = ".".join(loc) or "config"
        origin = sources.get(loc[:2]) if len(loc) >= 2 else None
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        given = error.get("input")
        shown = ""
        if error["type"] != "extra_forbidden" and isinstance(given, str | int | float | bool):
            shown = f" (got {given!r})" if loc[:2] not in _SECRET_PATHS else ""
        suffix = f" [from {origin}]" if origin else ""
        parts.append(f"{where}: {message}{shown}{suffix}")
    return "; ".join(parts)


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Load the config file (if any), apply the environment, validate.

    Raises ``ConfigError`` with one line naming the field on any problem.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    sources: dict[tuple[str, ...], str] = {}
    for section, field, value, variable in _env_overrides(env):
        block = data.setdefault(section, {})
        if not isinstance(block, dict):
            raise ConfigError(f"{section}: must be a mapping", field=section)
        block[field] = value
        sources[(section, field)] = f"env {variable}"
    try:
        return BridgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, sources)) from exc
