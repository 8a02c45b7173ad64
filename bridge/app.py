"""The bridge assembled: build, start, run, drain, close.

    platform SSE ─┐                                   ┌─> xpander.task.events
    (one stream   ├─> normalize ─> bounded queue ─> Kafka sink ─> xpander.task.state
     per task)    │   (envelope,   (back-pressure)   (acks)    └─> xpander.bridge.dlq
    polling ──────┘    CE headers)

Shutdown runs in the order that loses nothing: stop discovery and every
stream (no new input), drain the queue until every record is acknowledged,
flush and stop the producer, close the HTTP clients. All under one deadline;
whatever is still pending when it passes is named in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.config import BridgeConfig
from bridge.coordination.checkpointer import Checkpointer
from bridge.coordination.checkpoints import Checkpoint, load_checkpoints
from bridge.coordination.ownership import Ownership
from bridge.coordination.partitioning import partition_for
from bridge.errors import AuthError, ConfigError, UnavailableError
from bridge.gc_policy import GcPolicy
from bridge.observability.health import Health
from bridge.observability.http import HealthServer
from bridge.observability.logging import register_secret
from bridge.observability.metrics import Metrics
from bridge.pipeline.backoff import Backoff
from bridge.pipeline.delivery import DeliveryLoop
from bridge.pipeline.queue import RecordQueue
from bridge.pipeline.record import OutRecord
from bridge.platform.client import PlatformClient
from bridge.sinks.kafka.producer import KafkaSink
from bridge.sinks.platform.recorder import Recorder
from bridge.sources.kafka.reports import ReportsSource
from bridge.sources.platform.discovery import Discovery
from bridge.sources.platform.supervisor import TaskSupervisor
from bridge.transforms.normalize import Normalizer

__all__ = ["Bridge", "ShutdownReport"]

log = logging.getLogger(__name__)


@dataclass
class ShutdownReport:
    clean: bool
    seconds: float
    undelivered: int = 0
    not_stopped: list[str] = field(default_factory=list)


class Bridge:
    """The daemon. ``async with Bridge(config) as bridge: await bridge.wait()``."""

    def __init__(self, config: BridgeConfig, *, registry: CollectorRegistry | None = None) -> None:
        missing = config.missing_for_run()
        if missing:
            raise ConfigError(missing[0], field=missing[0].split(":")[0])
        self.config = config
        self.metrics = Metrics(registry, agent_ids=config.discovery.agent_ids)
        self.health = Health(self.metrics)
        self.queue = RecordQueue(config.pipeline.queue_capacity, config.pipeline.queue_max_bytes)
        self.metrics.queue_capacity.set(config.pipeline.queue_capacity)
        self.sink = KafkaSink(config.kafka, config.topics, config.coordination)
        self.http: HealthServer | None = None
        self.delivery: DeliveryLoop | None = None
        self.discovery: Discovery | None = None
        self.supervisor: TaskSupervisor | None = None
        self.client: PlatformClient | None = None
        self.reports: ReportsSource | None = None
        self.ownership: Ownership | None = None
        self.checkpointer: Checkpointer | None = None
        self.gc_policy: GcPolicy | None = None
        #: checkpoints of the tasks in the owned partitions, loaded on assignment
        self.checkpoints: dict[str, Checkpoint] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: records handed to the queue; at a clean stop, all of them were delivered
        self.records_enqueued = 0
        self._stopped = asyncio.Event()
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
        self.health.set("kafka", False, "connecting")
        await self._connect_kafka()
        self.health.set("kafka", True)
        self.delivery = DeliveryLoop(self.queue, self.sink, self.metrics)
        self._spawn("delivery", self.delivery.run())
        self._spawn("readiness", self._watch_readiness())
        if config.streams.enabled and config.coordination.enabled:
            self._start_coordination()
        if config.streams.enabled:
            self._start_platform_source()
        if config.reports.enabled:
            self._start_reports_source()
        log.info(
            "bridge started",
            extra={
                "agents": len(config.discovery.agent_ids),
                "users": len(config.discovery.user_ids),
                "events_topic": config.topics.events,
                "http_port": self.http.port if self.http else None,
            },
        )

    async def _connect_kafka(self) -> None:
        """Until Kafka answers: a broker that is down at start-up is waited for
        (not ready meanwhile); a setting it cannot honour stops the start."""
        backoff = Backoff(0.5, 15.0)
        while True:
            try:
                await self.sink.connect()
                return
            except ConfigError:
                raise
            except UnavailableError as exc:
                delay = backoff.next_delay()
                self.health.set("kafka", False, str(exc))
                log.warning(
                    "Kafka not reachable yet; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2)},
                )
                self.sink = KafkaSink(
                    self.config.kafka, self.config.topics, self.config.coordination
                )
                await asyncio.sleep(delay)

    def _platform_client(self) -> PlatformClient:
        if self.client is None:
            config = self.config
            self.client = PlatformClient(config.platform, config.streams, self.metrics)
        return self.client

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
        self.reports = ReportsSource(
            config,
            recorder,
            Normalizer(
                config.topics,
                config.kafka,
                self.metrics,
                publish_connected=config.streams.publish_connected,
            ),
            self._publish,
            self.metrics,
            on_state=lambda ok, detail: self.health.set("reports", ok, detail),
        )
        self._spawn("reports", self.reports.run())

    def _start_coordination(self) -> None:
        config = self.config
        self.health.set("coordination", False, "waiting for a partition assignment")
        self.metrics.coordination_partitions.set(config.coordination.partitions)
        self.checkpointer = Checkpointer(config.coordination, self._publish, self.metrics)
        self.ownership = Ownership(
            config.kafka,
            config.coordination,
            self.metrics,
            on_assigned=self._partitions_assigned,
            on_revoked=self._partitions_revoked,
        )
        self._spawn("ownership", self.ownership.run())
        self._spawn("checkpointer", self.checkpointer.run())

    async def _partitions_assigned(self, partitions: list[int]) -> None:
        config = self.config
        loaded = await load_checkpoints(
            config.kafka, config.coordination.checkpoints_topic, partitions
        )
        assert self.checkpointer is not None
        expired = self.checkpointer.expire(loaded.values())
        if expired:
            await self._publish(expired)
        self.checkpoints.update(loaded)
        self.health.set("coordination", True)
        log.info(
            "resuming owned tasks from their checkpoints",
            extra={"partitions": len(partitions), "checkpoints": len(loaded)},
        )
        if self.discovery is not None:
            self.discovery.wake()

    async def _partitions_revoked(self, partitions: list[int]) -> None:
        """Ownership moves: stop those streams, write their checkpoints, and
        only then let the group rebalance, so the next owner starts from them."""
        moving = set(partitions)
        count = self.config.coordination.partitions

        def leaving(task_id: str) -> bool:
            return partition_for(task_id, count) in moving

        states = await self.supervisor.release(leaving) if self.supervisor else []
        if self.checkpointer is not None:
            states += self.checkpointer.watched(leaving)
            await self.checkpointer.flush(
                states, self.config.coordination.checkpoint_interval_s * 10
            )
        for task_id in [t for t in self.checkpoints if leaving(t)]:
            del self.checkpoints[task_id]

    def _start_platform_source(self) -> None:
        config = self.config
        self.health.set("platform", False, "first listing pending")
        self._platform_client()
        assert self.client is not None
        normalizer = Normalizer(
            config.topics,
            config.kafka,
            self.metrics,
            publish_connected=config.streams.publish_connected,
            on_delivered=self.checkpointer.delivered if self.checkpointer else None,
        )
        self.supervisor = TaskSupervisor(
            self.client,
            normalizer,
            self._publish,
            self.metrics,
            config.streams,
            config.discovery,
            on_auth_error=self._platform_auth_failed,
            on_auth_ok=self._platform_ok,
            on_new_state=self.checkpointer.watch if self.checkpointer else None,
        )
        ownership = self.ownership
        self.discovery = Discovery(
            self.client,
            self.supervisor,
            config.discovery,
            on_success=self._platform_ok,
            on_auth_error=self._platform_auth_failed,
            owns=ownership.owns if ownership is not None else None,
            checkpoints=self.checkpoints,
            catch_up_window_s=(
                config.coordination.checkpoint_retention_s if ownership is not None else None
            ),
        )
        self._spawn("discovery", self.discovery.run())

    async def _publish(self, records: list[OutRecord]) -> None:
        queue = self.queue
        self.records_enqueued += len(records)
        for record in records:
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                await queue.put(record)  # back-pressure: the stream stops reading here

    def _platform_ok(self) -> None:
        self.health.set("platform", True)

    def _platform_auth_failed(self, exc: AuthError) -> None:
        self.health.set("platform", False, f"authentication refused (HTTP {exc.status})")

    async def _watch_readiness(self) -> None:
        while True:
            delivery = self.delivery
            stall = max(10.0, 2 * self.config.kafka.request_timeout_ms / 1000 / 3)
            ok = self.sink.connected and (
                delivery is None or (delivery.healthy and not delivery.stalled(stall))
            )
            self.health.set("kafka", ok, "" if ok else "sends failing or stalled; retrying")
            self.metrics.queue_depth.set(self.queue.qsize())
            await asyncio.sleep(1.0)

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
            self._stopped.set()

    # --- run and stop -------------------------------------------------------

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        """Until ``request_stop()`` (SIGTERM) or an internal failure."""
        await self._stopped.wait()

    async def shutdown(self, timeout_s: float | None = None) -> ShutdownReport:
        deadline = self.config.pipeline.shutdown_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        report = ShutdownReport(clean=True, seconds=0.0)
        # 1. Stop reading.
        await self._cancel("discovery")
        if self.supervisor is not None:
            states = await self.supervisor.stop()
            if self.checkpointer is not None:
                await self._cancel("checkpointer")
                remaining = max(0.1, deadline - (time.monotonic() - started))
                states += self.checkpointer.watched(lambda _: True)
                await self.checkpointer.flush(states, remaining * 0.5)
        if self.reports is not None:
            # Its in-flight messages finish (their DLQ and mirror records need
            # the delivery loop, still running), then it commits and leaves.
            await self._cancel("reports")  # the fetch loop; recordings go on
            remaining = max(0.1, deadline - (time.monotonic() - started))
            await self.reports.stop(remaining * 0.6)
        # 2. Drain: every record read so far acknowledged by Kafka.
        if self.delivery is not None:
            remaining = max(0.0, deadline - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self.delivery.drain(), remaining)
            except TimeoutError:
                report.clean = False
                report.undelivered = self.queue.qsize() + self.delivery.in_flight
                report.not_stopped.append("delivery")
        # 3. Leave the group (checkpoints are in Kafka), close the sink and clients.
        await self._cancel("ownership")
        if self.ownership is not None:
            await self.ownership.aclose()
        for name in ("delivery", "readiness", "heartbeat", "gc"):
            await self._cancel(name)
        if self.gc_policy is not None:
            self.gc_policy.uninstall()
        try:
            remaining = max(0.1, deadline - (time.monotonic() - started))
            await asyncio.wait_for(self.sink.aclose(), remaining)
        except TimeoutError:
            report.clean = False
            report.not_stopped.append("kafka producer")
        if self.client is not None:
            await self.client.aclose()
        if self.http is not None:
            await self.http.aclose()
        report.seconds = time.monotonic() - started
        level = logging.INFO if report.clean else logging.ERROR
        log.log(
            level,
            "bridge stopped" if report.clean else "bridge stopped with work left undone",
            extra={
                "seconds": round(report.seconds, 3),
                "records_enqueued": self.records_enqueued,
                "records_delivered": self.delivery.delivered if self.delivery else 0,
                "undelivered_records": report.undelivered,
                "not_stopped": ",".join(report.not_stopped) or None,
            },
        )
        return report

    async def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            # Bounded: a task that swallows its cancellation must not hold the
            # shutdown hostage; it is named in the log instead.
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if not done:
                log.error("internal task did not stop when cancelled", extra={"task": name})
