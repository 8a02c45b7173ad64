"""The Kafka-to-platform direction, assembled: what one report or metrics
message goes through between the consumer source and the sinks.

    PartitionedConsumer ─> parse ─────> Recorder ───────> mirror envelope ──> events topic
                           │ invalid     │ refused (4xx)  (Normalizer)
                           └─────────────┴─> DeadLetterSink ──> DLQ topic

A message is done (its offset may be committed) when it was recorded and its
mirror envelope acknowledged by Kafka, or when its dead-letter record was.
A task id recorded moments ago is skipped as a redelivery (a bounded cache).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from bridge.config import BridgeConfig
from bridge.core.message import InMessage
from bridge.core.record import Publish, publish_acked
from bridge.core.task import TaskState
from bridge.envelope import EventSource
from bridge.errors import InvalidDataError, RejectedError
from bridge.observability.metrics import DeadLetterReason, Metrics, ReportKind, ReportOutcome
from bridge.sinks.kafka.dead_letters import DeadLetterSink
from bridge.sinks.platform.recorder import Recorder
from bridge.transforms.normalize import Normalizer
from bridge.transforms.reports import ParsedMessage, parse_message

__all__ = ["ReportFlow"]


class ReportFlow:
    """The handler the report consumer calls for each message."""

    def __init__(
        self,
        config: BridgeConfig,
        recorder: Recorder,
        normalizer: Normalizer,
        dead_letters: DeadLetterSink,
        publish: Publish,
        metrics: Metrics,
    ) -> None:
        self._recorder = recorder
        self._normalizer = normalizer
        self._dead_letters = dead_letters
        self._publish = publish
        self._metrics = metrics
        self._organization_id = config.platform.organization_id
        self._cache_size = config.reports.dedupe_cache_size
        self._kinds = {
            config.reports.reports_topic: ReportKind.REPORT,
            config.reports.metrics_topic: ReportKind.METRICS,
        }
        self._recent: OrderedDict[tuple[ReportKind, str], None] = OrderedDict()
        self._loop = asyncio.get_running_loop()

    @property
    def topics(self) -> list[str]:
        return list(self._kinds)

    async def __call__(self, message: InMessage) -> None:
        kind = self._kinds[message.topic]
        started = self._loop.time()
        self._metrics.reports_consumed(kind).inc()
        outcome = await self._handle(kind, message)
        self._metrics.reports_recorded(kind, outcome).inc()
        self._metrics.report_record_latency.observe(self._loop.time() - started)

    async def _handle(self, kind: ReportKind, message: InMessage) -> ReportOutcome:
        try:
            parsed = parse_message(
                kind,
                message.value,
                message.key,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
        except InvalidDataError as exc:
            await self._dead_letters.write(message, DeadLetterReason.INVALID_REPORT, str(exc), None)
            return ReportOutcome.DEAD_LETTERED
        recent_key = (kind, parsed.task_id)
        if recent_key in self._recent:
            return ReportOutcome.DUPLICATE
        try:
            answer = await self._recorder.record(kind, parsed.agent_id, parsed.body)
        except RejectedError as exc:
            await self._dead_letters.write(
                message, DeadLetterReason.PLATFORM_REJECTED, str(exc), exc.status
            )
            return ReportOutcome.DEAD_LETTERED
        if kind is ReportKind.REPORT:
            await self._mirror(parsed, answer)
        self._remember(recent_key)
        return ReportOutcome.RECORDED

    async def _mirror(self, parsed: ParsedMessage, answer: Any) -> None:
        """Publish the recorded run as an envelope with ``source: report``."""
        task = answer if isinstance(answer, dict) else {"id": parsed.task_id}
        state = TaskState(parsed.task_id, parsed.agent_id, self._organization_id)
        records = self._normalizer.from_snapshot(state, task, EventSource.REPORT, self._loop.time())
        await publish_acked(self._publish, records)

    def _remember(self, key: tuple[ReportKind, str]) -> None:
        if self._cache_size <= 0:
            return
        self._recent[key] = None
        while len(self._recent) > self._cache_size:
            self._recent.popitem(last=False)
