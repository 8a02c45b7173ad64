"""The bridge assembled: build, start, run, drain, close. The wiring lives
here and in ``report_flow``; it is the only place that knows sources,
transforms and sinks together (the import contracts in pyproject.toml hold
everyone else to less).

    platform SSE ─┐                                   ┌─> xpander.task.events
    (one stream   ├─> normalize ─> bounded queue ─> Kafka sink ─> xpander.task.state
     per task)    │   (envelope,   (back-pressure)   (acks)    └─> xpander.bridge.dlq
    polling ──────┘    CE headers)
    reports topic ─> parse ─> platform recorder ─> mirror envelope / DLQ ─┘

Shutdown runs in the order that loses nothing (``shutdown``): stop the inputs
(discovery, streams, the report consumer) and write the final checkpoints,
drain the queue until every record is acknowledged, then leave the group and
close the sink and clients. Each stage gets what is left of
``pipeline.shutdown_timeout_s``; whatever is still pending is named in the log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.app.command_flow import CommandFlow
from bridge.app.follow_hints import FollowHints
from bridge.app.pressure import Pressure
from bridge.app.report_flow import ReportFlow
from bridge.config import BridgeConfig
from bridge.coordination.checkpointer import Checkpointer
from bridge.coordination.handover import Handover, ReplicaClaims
from bridge.coordination.ownership import Ownership
from bridge.core.record import CURRENT_INPUT, OutRecord
from bridge.core.retry import RetryPolicy
from bridge.errors import AuthError, ConfigError, UnavailableError
from bridge.gc_policy import GcPolicy
from bridge.kafka.options import KAFKA_RETRY
from bridge.kafka.topics import flow_topics
from bridge.observability.health import Health
from bridge.observability.http import HealthServer
from bridge.observability.logging import register_secret
from bridge.observability.loop_lag import LoopLag
from bridge.observability.metrics import Metrics
from bridge.pipeline.delivery import DeliveryLoop
from bridge.pipeline.queue import RecordQueue
from bridge.pipeline.readiness import KafkaReadiness
from bridge.pipeline.transactions import TransactionalDelivery
from bridge.platform.client import PlatformClient
from bridge.sinks.kafka.dead_letters import DeadLetterSink
from bridge.sinks.kafka.producer import KafkaSink
from bridge.sinks.platform.commander import Commander
from bridge.sinks.platform.recorder import Recorder
from bridge.sources.kafka.consumer import PartitionedConsumer
from bridge.sources.platform.context import WorkerContext
from bridge.sources.platform.discovery import Discovery
from bridge.sources.platform.pacer import FetchPacer
from bridge.sources.platform.supervisor import TaskSupervisor
from bridge.transforms.activity import ActivityRecords
from bridge.transforms.agent_stats import AgentStats
from bridge.transforms.normalize import Normalizer

__all__ = ["Bridge", "ShutdownReport"]

log = logging.getLogger(__name__)

#: Most a cancelled internal task may take to stop before it is named in the log.
_CANCEL_GRACE_S = 5.0


@dataclass
class ShutdownReport:
    clean: bool
    seconds: float
    undelivered: int = 0
    not_stopped: list[str] = field(default_factory=list)


async def _bounded(
    what: str, work: Coroutine[Any, Any, None], seconds: float, report: ShutdownReport
) -> None:
    """One shutdown step, given what is left of the deadline; one that does not
    finish in time is named in the final log line instead of holding the exit."""
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        report.clean = False
        report.not_stopped.append(what)


class _Deadline:
    """What is left of the shutdown deadline; each stage takes its share."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self, floor: float = 0.1) -> float:
        return max(floor, self._end - time.monotonic())


class _PlatformReadiness:
    """The platform side's readiness condition, as workers and discovery see it."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def reachable(self) -> None:
        self._health.set("platform", True)

    def refused(self, error: AuthError) -> None:
        self._health.set("platform", False, f"authentication refused (HTTP {error.status})")

    def listings(self, ok: bool, detail: str) -> None:
        self._health.set("listings", ok, detail)


class Bridge:
    """The daemon. ``async with Bridge(config) as bridge: await bridge.wait()``."""

    def __init__(self, config: BridgeConfig, *, registry: CollectorRegistry | None = None) -> None:
        missing = config.missing_for_run()
        if missing:
            raise ConfigError(missing[0], field=missing[0].split(":")[0])
        self.config = config
        self.metrics = Metrics(
            registry,
            agent_ids=config.discovery.agent_ids,
            user_ids=config.discovery.user_ids,
        )
        self.health = Health(self.metrics)
        self.agent_stats = AgentStats(self.metrics)
        self.queue = RecordQueue(config.pipeline.queue_capacity, config.pipeline.queue_max_bytes)
        self.metrics.queue_capacity.set(config.pipeline.queue_capacity)
        self.instance_id = config.coordination.instance_id or socket.gethostname()
        kafka = config.kafka
        self.sink = KafkaSink(
            kafka,
            config.topics,
            config.coordination,
            flow_topics=flow_topics(config),
            transactional_id=(
                (kafka.transactional_id or f"{kafka.client_id}-{self.instance_id}")
                if kafka.transactions
                else None
            ),
        )
        #: ``kafka.transaction_pipeline``: the second producer transactions take turns on
        self.partner_sink = (
            self.sink.partner() if kafka.transactions and kafka.transaction_pipeline else None
        )
        self.http: HealthServer | None = None
        self.delivery: DeliveryLoop | None = None
        self.discovery: Discovery | None = None
        self.supervisor: TaskSupervisor | None = None
        self.client: PlatformClient | None = None
        self.reports: PartitionedConsumer | None = None
        self.commands: PartitionedConsumer | None = None
        self.ownership: Ownership | None = None
        self.checkpointer: Checkpointer | None = None
        self.gc_policy: GcPolicy | None = None
        self.loop_lag = LoopLag(self.metrics, config.activity.busy_loop_lag_ms / 1000)
        #: tasks created by commands stream at once on their owner (``app.follow_hints``)
        self.follow_hints: FollowHints | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: records handed to the queue; at a clean stop, all of them were delivered
        self.records_enqueued = 0
        self._stopped = asyncio.Event()
        #: internal tasks that died of an error (a fenced producer, a bug): the
        #: process then exits 1 however cleanly the rest stops
        self._failed: list[str] = []
        self._publishing = asyncio.Lock()
        #: internal tasks that did not stop when cancelled
        self._stuck: list[str] = []
        for secret in (config.platform.api_key, config.kafka.sasl_password):
            if secret is not None:
                register_secret(secret.get_secret_value())

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # --- start ----------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        if config.http.enabled:
            self.http = HealthServer(self.metrics, self.health, config.http.host, config.http.port)
            await self.http.start()
        self._spawn("heartbeat", self.health.heartbeat())
        pipeline = config.pipeline
        self.gc_policy = GcPolicy(
            self.metrics, pipeline.gc_freeze_interval_s, pipeline.gc_full_interval_s
        )
        self.gc_policy.install()
        self._spawn("gc", self.gc_policy.run())
        self._spawn("loop-lag", self.loop_lag.run())
        await self._connect_kafka()
        self.delivery = self._delivery_loop()
        self._spawn("delivery", self.delivery.run())
        readiness = KafkaReadiness(
            self.sink,
            self.delivery,
            self.queue,
            self.health,
            self.metrics,
            request_timeout_ms=config.kafka.request_timeout_ms,
        )
        self._spawn("readiness", readiness.run())
        if config.streams.enabled:
            self._start_platform_source()
        if config.reports.enabled:
            self._start_reports_source()
        if config.commands.enabled:
            self._start_commands_source()
        log.info(
            "bridge started",
            extra={
                "agents": len(config.discovery.agent_ids),
                "users": len(config.discovery.user_ids),
                "events_topic": config.topics.events,
                "http_port": self.http.port if self.http else None,
                "instance": self.ownership.instance_id if self.ownership else None,
                # (pipeline.event_loop: "uvloop" or "asyncio")
                "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
            },
        )

    def _delivery_loop(self) -> DeliveryLoop:
        kafka = self.config.kafka
        if not kafka.transactions:
            return DeliveryLoop(
                self.queue, self.sink, self.metrics, max_record_bytes=kafka.max_request_bytes
            )
        return TransactionalDelivery(
            self.queue,
            self.sink,
            self.metrics,
            interval_s=kafka.transaction_interval_ms / 1000,
            max_records=kafka.transaction_max_records,
            linger_s=kafka.linger_ms / 1000,
            partner=self.partner_sink,
            covering=self._covering,
            # the report consumer's offsets commit with the records their messages
            # produced; the ownership group's prove that this replica still owns its tasks
            offsets=lambda: [
                s for s in (self.reports, self.commands, self.ownership) if s is not None
            ],
            max_record_bytes=kafka.max_request_bytes,
        )

    def _covering(self) -> list[OutRecord]:
        """The open transaction's checkpoints (none without coordination); they
        skip the queue but count among the records the bridge must deliver."""
        records = self.checkpointer.covering() if self.checkpointer is not None else []
        self.records_enqueued += len(records)
        return records

    async def _connect_kafka(self) -> None:
        """Until Kafka answers: a broker that is down at start-up is waited for
        (not ready meanwhile); a setting it cannot honour (``ConfigError``) stops the start."""
        self.health.set("kafka", False, "connecting")
        backoff = KAFKA_RETRY.backoff()
        while True:
            try:
                for sink in (self.sink, self.partner_sink):
                    if sink is not None and not sink.connected:
                        await sink.connect()
            except UnavailableError as exc:
                self.health.set("kafka", False, str(exc))
                delay = await KAFKA_RETRY.wait(backoff)
                log.warning(
                    "Kafka not reachable yet; retried",
                    extra={"error": str(exc), "waited_s": round(delay, 2)},
                )
                continue
            self.health.set("kafka", True)
            return

    def _platform_client(self) -> PlatformClient:
        if self.client is None:
            config = self.config
            self.client = PlatformClient(config.platform, config.streams, self.metrics)
        return self.client

    def _normalizer(
        self, checkpointer: Checkpointer | None = None, *, activity: bool = False
    ) -> Normalizer:
        """``activity``: the platform source's, which publishes ended tasks' threads."""
        config = self.config
        activity_records = None
        if activity and config.activity.enabled and config.topics.activity:
            activity_records = ActivityRecords(
                config.topics.activity,
                config.topics.dlq,
                max_part_bytes=config.activity.max_part_bytes,
                max_request_bytes=config.kafka.max_request_bytes,
                exclude_agent_ids=config.activity.exclude_agent_ids,
            )
        return Normalizer(
            config.topics,
            config.kafka,
            self.metrics,
            publish_connected=config.streams.publish_connected,
            on_written=checkpointer.written if checkpointer is not None else None,
            agent_stats=self.agent_stats,
            activity=activity_records,
        )

    def _start_platform_source(self) -> None:
        """Discovery, the supervisor and its workers; with coordination, the
        ownership group, the checkpointer and the handover between them."""
        config = self.config
        client = self._platform_client()
        coordinated = config.coordination.enabled
        if coordinated:
            self.checkpointer = Checkpointer(
                config.coordination,
                self._publish,
                self.metrics,
                transactional=config.kafka.transactions,
            )
        readiness = _PlatformReadiness(self.health)
        streams = config.streams
        context = WorkerContext(
            client=client,
            transform=self._normalizer(self.checkpointer, activity=True),
            publish=self._publish,
            metrics=self.metrics,
            health=readiness,
            reconnect=RetryPolicy(streams.reconnect_initial_s, streams.reconnect_max_s),
            resync_grace_s=streams.resync_grace_s,
            quiet_check_s=streams.quiet_check_s,
            poll_interval_s=config.discovery.poll_interval_s,
            admission=asyncio.Semaphore(streams.max_concurrent),
            max_frame_bytes=streams.max_frame_bytes,
            activity_pacer=FetchPacer(
                config.activity.max_concurrent_fetches,
                self.metrics.activity_fetches_waiting,
                Pressure(self.loop_lag, self.queue, config.activity.busy_queue_wait_ms / 1000),
            ),
        )
        checkpointer = self.checkpointer
        stats = self.agent_stats
        self.supervisor = TaskSupervisor(
            context,
            on_follow=stats.on_follow(checkpointer.watch if checkpointer is not None else None),
            on_release=stats.on_release(checkpointer.release if checkpointer is not None else None),
        )
        relist = asyncio.Event()
        claims = (
            self._start_coordination(checkpointer, self.supervisor, relist)
            if checkpointer is not None
            else None
        )
        self.discovery = Discovery(
            context, self.supervisor, config.discovery, claims=claims, wake=relist
        )
        self.follow_hints = FollowHints(
            config.coordination, self._publish, self.metrics, self.discovery
        )
        self.health.set("platform", False, "first listing pending")
        self._spawn("discovery", self.discovery.run())

    def _start_coordination(
        self, checkpointer: Checkpointer, supervisor: TaskSupervisor, relist: asyncio.Event
    ) -> ReplicaClaims:
        """Join the ownership group; the handover moves streams and checkpoints
        between replicas, and tells discovery (``relist``) when partitions came."""
        config = self.config
        handover = Handover(
            config.kafka,
            config.coordination,
            checkpointer,
            self._publish,
            self.health,
            streams=supervisor,
            relist=relist,
        )
        self.ownership = Ownership(
            config.kafka,
            config.coordination,
            self.metrics,
            on_assigned=handover.assigned,
            on_revoked=handover.revoked,
            on_record=lambda message: (
                self.follow_hints(message) if self.follow_hints is not None else None
            ),
        )
        self.health.set("coordination", False, "waiting for a partition assignment")
        self.metrics.coordination_partitions.set(config.coordination.partitions)
        self._spawn("ownership", self.ownership.run())
        self._spawn("checkpointer", checkpointer.run())
        return ReplicaClaims(self.ownership, handover, config.coordination.checkpoint_retention_s)

    def _start_reports_source(self) -> None:
        config = self.config
        self.health.set("reports", False, "joining the consumer group")
        recorder = Recorder(
            self._platform_client(),
            self.metrics,
            config.reports,
            on_halt=lambda exc: self.health.set(
                "reports", False, f"halted: the platform refuses the API key (HTTP {exc.status})"
            ),
            on_resume=lambda: self.health.set("reports", True),
        )
        flow = ReportFlow(
            config,
            recorder,
            self._normalizer(),
            DeadLetterSink(config.topics.dlq, self._publish),
            self._publish,
            self.metrics,
        )
        self.reports = PartitionedConsumer(
            config.kafka,
            config.reports,
            flow.topics,
            flow,
            self.metrics,
            halted=lambda: recorder.halted,
            on_state=lambda ok, detail: self.health.set("reports", ok, detail),
            transactional=config.kafka.transactions,
        )
        self._spawn("reports", self.reports.run())

    def _start_commands_source(self) -> None:
        """Task commands from Kafka (``app/command_flow.py``): a second consumer
        group on the same machinery as reports; replies (and a created task's
        follow note) commit in the transaction of the command's offset."""
        config = self.config
        self.health.set("commands", False, "joining the consumer group")
        commander = Commander(
            self._platform_client(),
            self.metrics,
            config.commands,
            on_halt=lambda exc: self.health.set(
                "commands", False, f"halted: the platform refuses the API key (HTTP {exc.status})"
            ),
            on_resume=lambda: self.health.set("commands", True),
        )
        flow = CommandFlow(
            config,
            commander,
            self._publish,
            self.metrics,
            follow=lambda task: (
                self.follow_hints.records_for(task) if self.follow_hints is not None else []
            ),
        )
        self.commands = PartitionedConsumer(
            config.kafka,
            config.commands,
            flow.topics,
            flow,
            self.metrics,
            halted=lambda: commander.halted,
            on_state=lambda ok, detail: self.health.set("commands", ok, detail),
            transactional=config.kafka.transactions,
        )
        self._spawn("commands", self.commands.run())

    async def _publish(self, records: list[OutRecord]) -> None:
        """Into the queue, one call's records side by side (a transaction must
        not end inside one envelope's records): callers take turns, so a call
        waiting for room is not interleaved with another's."""
        queue = self.queue
        self.records_enqueued += len(records)
        source = CURRENT_INPUT.get()
        if source is not None:
            source.output(records)
        for record in records[:-1]:
            record.joined = True
        async with self._publishing:
            for record in records:
                try:
                    queue.put_nowait(record)
                except asyncio.QueueFull:
                    await queue.put(record)  # back-pressure: the stream stops reading here

    def _spawn(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error(
                "internal task failed; stopping the bridge",
                exc_info=error,
                extra={"task": task.get_name()},
            )
            self._failed.append(task.get_name())
            self._stopped.set()

    # --- run and stop -------------------------------------------------------

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        """Until ``request_stop()`` (SIGTERM) or an internal failure."""
        await self._stopped.wait()

    async def shutdown(self, timeout_s: float | None = None) -> ShutdownReport:
        started = time.monotonic()
        deadline = _Deadline(
            self.config.pipeline.shutdown_timeout_s if timeout_s is None else timeout_s
        )
        report = ShutdownReport(clean=True, seconds=0.0)
        # With the delivery loop dead (fenced), nothing more will be
        # acknowledged: waiting for acks would only hold the exit to the
        # deadline. What was not committed is the next owner's to redo.
        waits = _Deadline(0.0) if "delivery" in self._failed else deadline
        await _bounded("inputs", self._stop_inputs(waits), deadline.left(), report)
        await self._drain(report, waits.left(0.0))
        await self._close(report, deadline)
        if self._stuck:
            report.clean = False
            report.not_stopped.extend(self._stuck)
        if self._failed:
            report.clean = False
            report.not_stopped.extend(f"{name} (failed)" for name in self._failed)
        report.seconds = time.monotonic() - started
        self._log_stopped(report)
        return report

    async def _stop_inputs(self, deadline: _Deadline) -> None:
        """Stage 1: no new input. Streams stop and their final checkpoints are
        written; the report consumer's in-flight messages finish (their DLQ and
        mirror records need the delivery loop, still running), then it commits."""
        await self._cancel("discovery")
        if self.supervisor is not None:
            states = await self.supervisor.stop()
            if self.checkpointer is not None:
                await self._cancel("checkpointer")
                states += self.checkpointer.watched(lambda _: True)
                await self.checkpointer.flush(states, deadline.left() * 0.5)
        if self.reports is not None:
            await self._cancel("reports")  # the fetch loop; in-flight messages go on
            await self.reports.stop(deadline.left() * 0.6)
        if self.commands is not None:
            await self._cancel("commands")
            await self.commands.stop(deadline.left() * 0.6)

    async def _drain(self, report: ShutdownReport, timeout_s: float) -> None:
        """Stage 2: every record read so far acknowledged by Kafka."""
        if self.delivery is None:
            return
        try:
            await asyncio.wait_for(self.delivery.drain(), timeout_s)
        except TimeoutError:
            report.clean = False
            report.undelivered = self.queue.qsize() + self.delivery.in_flight
            report.not_stopped.append("delivery")

    async def _close(self, report: ShutdownReport, deadline: _Deadline) -> None:
        """Stage 3: leave the group (checkpoints are in Kafka), close the sink and clients."""
        await self._cancel("ownership")
        if self.ownership is not None:
            await _bounded("ownership group", self.ownership.aclose(), deadline.left(), report)
        for name in ("delivery", "readiness", "heartbeat", "gc"):
            await self._cancel(name)
        if self.gc_policy is not None:
            self.gc_policy.uninstall()
        await _bounded("kafka producer", self.sink.aclose(), deadline.left(), report)
        if self.partner_sink is not None:
            await _bounded(
                "second kafka producer", self.partner_sink.aclose(), deadline.left(), report
            )
        if self.client is not None:
            await _bounded("platform client", self.client.aclose(), deadline.left(), report)
        if self.http is not None:
            await _bounded("http server", self.http.aclose(), deadline.left(), report)

    def _log_stopped(self, report: ShutdownReport) -> None:
        log.log(
            logging.INFO if report.clean else logging.ERROR,
            "bridge stopped" if report.clean else "bridge stopped with work left undone",
            extra={
                "seconds": round(report.seconds, 3),
                "records_enqueued": self.records_enqueued,
                "records_delivered": self.delivery.delivered if self.delivery else 0,
                "undelivered_records": report.undelivered,
                "not_stopped": ",".join(report.not_stopped) or None,
            },
        )

    async def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            # Bounded: a task that swallows its cancellation must not hold the
            # shutdown hostage; it is named in the log instead.
            done, _ = await asyncio.wait({task}, timeout=_CANCEL_GRACE_S)
            if not done:
                self._stuck.append(name)
            if not done:
                log.error("internal task did not stop when cancelled", extra={"task": name})
