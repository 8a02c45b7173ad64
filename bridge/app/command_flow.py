"""Task commands from Kafka, assembled: what one command message goes through
between the consumer source and its reply (``docs/COMMANDS.md``).

    PartitionedConsumer ─> parse ─> allow-list ─> Commander ─> reply ─> results topic
                           │ invalid  │ outside    │ 4xx        (+ follow note: create)
                           └──────────┴────────────┴─> DLQ record + rejected reply

Everything a command produces (its reply, its DLQ record, a created task's
follow note) is published in one call, so with transactions it commits in
one transaction with the command's offset: a command is answered once or,
after a crash, run again, and running it again changes nothing (the create's
task id is derived from the command id and checked before the POST; update
sets the same fields; stopping a stopped task is ok).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from bridge.config import BridgeConfig
from bridge.core.dead_letter import dead_letter
from bridge.core.message import InMessage
from bridge.core.record import Headers, OutRecord, Publish, publish_acked
from bridge.errors import InvalidDataError, RejectedError
from bridge.observability.metrics import CommandKind, CommandOutcome, DeadLetterReason, Metrics
from bridge.sinks.platform.commander import Commander
from bridge.transforms.commands import (
    ParsedCommand,
    command_id_of,
    encode_reply,
    parse_command,
    valid_topic,
)

__all__ = ["CORRELATION_HEADER", "REPLY_TOPIC_HEADER", "CommandFlow"]

log = logging.getLogger(__name__)

#: Spring Kafka's header names, which Java users already set
REPLY_TOPIC_HEADER = "kafka_replyTopic"
CORRELATION_HEADER = "kafka_correlationId"

#: A created task's follow records (``FollowHints.records_for``)
FollowRecords = Callable[[dict[str, Any]], list[OutRecord]]


class _Rejected(Exception):
    def __init__(self, reason: DeadLetterReason, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.status = status


class CommandFlow:
    """The handler the command consumer calls for each message."""

    def __init__(
        self,
        config: BridgeConfig,
        commander: Commander,
        publish: Publish,
        metrics: Metrics,
        *,
        follow: FollowRecords | None = None,
    ) -> None:
        commands = config.commands
        self._commander = commander
        self._publish = publish
        self._metrics = metrics
        self._follow = follow
        self._topic = commands.commands_topic
        self._results = commands.results_topic
        self._reply_topics = frozenset([commands.results_topic, *commands.reply_topics])
        self._dlq = config.topics.dlq
        self._namespace = uuid.UUID(commands.id_namespace)
        allowed = commands.agent_ids if commands.agent_ids is not None else None
        self._allowed = frozenset(allowed if allowed is not None else config.discovery.agent_ids)
        self._loop = asyncio.get_running_loop()

    @property
    def topics(self) -> list[str]:
        return [self._topic]

    async def __call__(self, message: InMessage) -> None:
        started = self._loop.time()
        headers = dict(message.headers)
        correlation = headers.get(CORRELATION_HEADER)
        reply_to = self._results
        command_id, kind = command_id_of(
            message.value, topic=message.topic, partition=message.partition, offset=message.offset
        )
        task_id: str | None = None
        agent_id: str | None = None
        try:
            reply_to = self._reply_topic(headers.get(REPLY_TOPIC_HEADER))
            parsed = self._parse(message)
            kind, command_id, task_id, agent_id = (
                parsed.kind,
                parsed.command_id,
                parsed.task_id,
                parsed.agent_id,
            )
            task, extra = await self._run(parsed)
        except _Rejected as exc:
            self._metrics.command_latency.observe(self._loop.time() - started)
            await self._reject(
                message, exc, kind, command_id, task_id, agent_id, reply_to, correlation
            )
            return
        self._metrics.command_latency.observe(self._loop.time() - started)
        outcome = CommandOutcome.OK if task is not None else CommandOutcome.FAILED
        status = _str(task.get("status")) if task is not None else None
        reply = self._reply(
            reply_to,
            correlation,
            encode_reply(
                command_id=command_id,
                command=kind,
                outcome=outcome,
                task_id=task_id,
                agent_id=_str(task.get("agent_id")) if task is not None else agent_id,
                status=status,
                error=None if task is not None else "the platform's answer was not a task",
            ),
            command_id,
        )
        await publish_acked(self._publish, [reply, *extra])
        self._metrics.commands(kind, outcome).inc()

    def _reply_topic(self, header: bytes | None) -> str:
        """The header's topic when it is one the bridge may write (a legal name, and
        ``results_topic`` or one of ``reply_topics``: a missing topic would hold
        every record behind the reply)."""
        if header is None:
            return self._results
        topic = header.decode("utf-8", "replace")
        if not valid_topic(topic):
            raise _Rejected(
                DeadLetterReason.INVALID_COMMAND,
                f"{REPLY_TOPIC_HEADER} {topic[:60]!r} is not a topic name",
            )
        if topic not in self._reply_topics:
            raise _Rejected(
                DeadLetterReason.INVALID_COMMAND,
                f"{REPLY_TOPIC_HEADER} {topic[:60]!r} is not in commands.reply_topics",
            )
        return topic

    def _parse(self, message: InMessage) -> ParsedCommand:
        try:
            return parse_command(
                message.value,
                namespace=self._namespace,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
        except InvalidDataError as exc:
            raise _Rejected(DeadLetterReason.INVALID_COMMAND, str(exc)) from exc

    async def _run(self, parsed: ParsedCommand) -> tuple[dict[str, Any] | None, list[OutRecord]]:
        """The platform call; the task it answers (``None``: unreadable) and what
        else goes with the reply (a created task's follow note)."""
        try:
            if parsed.kind is CommandKind.CREATE:
                assert parsed.agent_id is not None and parsed.body is not None
                self._check_agent(parsed.agent_id)
                task, _ = await self._commander.create(parsed.agent_id, parsed.task_id, parsed.body)
                follow = self._follow(task) if self._follow is not None else []
                return task, follow
            # update and stop: only tasks of allowed agents
            current = await self._commander.get(parsed.task_id)
            self._check_agent(_str(current.get("agent_id")) or "")
            if parsed.kind is CommandKind.UPDATE:
                assert parsed.body is not None
                return await self._commander.update(parsed.task_id, parsed.body), []
            return await self._commander.stop(parsed.task_id), []
        except InvalidDataError as exc:
            # a 2xx whose body is not a task: the call happened, its answer is unknown
            log.warning("unreadable platform answer", extra={"error": str(exc)})
            return None, []
        except RejectedError as exc:
            raise _Rejected(DeadLetterReason.COMMAND_REJECTED, str(exc), exc.status) from exc

    def _check_agent(self, agent_id: str) -> None:
        if agent_id not in self._allowed:
            raise _Rejected(
                DeadLetterReason.COMMAND_REJECTED,
                f"agent {agent_id[:60]!r} is not in commands.agent_ids",
            )

    async def _reject(  # noqa: PLR0913, PLR0917  (what the reply says)
        self,
        message: InMessage,
        rejected: _Rejected,
        kind: CommandKind,
        command_id: str,
        task_id: str | None,
        agent_id: str | None,
        reply_to: str,
        correlation: bytes | None,
    ) -> None:
        log.warning(
            "command rejected",
            extra={
                "reason": rejected.reason,
                "error": rejected.error,
                "command_id": command_id,
                "partition": message.partition,
                "offset": message.offset,
            },
        )
        record = dead_letter(
            topic=self._dlq,
            value=message.value or b"",
            key=message.key,
            reason=rejected.reason,
            error=rejected.error,
            source="kafka",
            received_at=self._loop.time(),
            attributes={
                "original_topic": message.topic,
                "original_partition": message.partition,
                "original_offset": message.offset,
                "status": rejected.status,
                "command_id": command_id,
            },
            original_headers=list(message.headers),
        )
        reply = self._reply(
            reply_to,
            correlation,
            encode_reply(
                command_id=command_id,
                command=kind,
                outcome=CommandOutcome.REJECTED,
                task_id=task_id,
                agent_id=agent_id,
                status=None,
                error=rejected.error,
            ),
            command_id,
        )
        await publish_acked(self._publish, [reply, record])
        self._metrics.commands(kind, CommandOutcome.REJECTED).inc()

    def _reply(
        self, topic: str, correlation: bytes | None, value: bytes, command_id: str
    ) -> OutRecord:
        headers: Headers = [("content-type", b"application/json")]
        if correlation is not None:
            headers.append((CORRELATION_HEADER, correlation))
        return OutRecord(
            topic, command_id.encode(), value, headers, "command_result", self._loop.time()
        )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
