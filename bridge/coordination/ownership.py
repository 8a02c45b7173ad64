"""Which replica streams which task: Kafka's consumer-group protocol does it.

Every replica joins one consumer group on the coordination topic
(``xpander.bridge.tasks``, compacted, key = task id). The group's assignment of
that topic's partitions *is* the ownership: a task belongs to the replica that
holds ``partition_for(task_id)``. Kafka's group coordinator detects dead
members (session timeout) and rebalances; no consensus of our own.

The group runs the cooperative protocol (``bridge.kafka.group``): on a
rebalance only the partitions that change owner are revoked (``on_revoked``:
stop those streams, write their checkpoints) and then assigned to their new
owner (``on_assigned``: read the checkpoints, resume); every other stream
keeps flowing. The topic's records are notes for the owner of their
partition: ``on_record`` gets those of owned partitions (``FollowHint``: a
task created by a command, to stream at once).

With transactions, every transaction carries this member's offsets on the
coordination topic with its group metadata (``OffsetSource``, KIP-447): the
broker refuses them from a generation the group has left, so a replica that
was paused past its session timeout (a zombie whose tasks now stream
elsewhere) cannot commit what it sends after waking; it stops instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition

from bridge.config import CoordinationConfig, KafkaConfig
from bridge.coordination.partitioning import partition_for
from bridge.core.message import InMessage
from bridge.kafka.group import GroupMember, group_config, in_message
from bridge.kafka.options import KAFKA_RETRY
from bridge.observability.metrics import Metrics

__all__ = ["Ownership"]

log = logging.getLogger(__name__)

PartitionNumbersCallback = Callable[[list[int]], Awaitable[None]]


class Ownership:
    def __init__(
        self,
        kafka: KafkaConfig,
        config: CoordinationConfig,
        metrics: Metrics,
        *,
        on_assigned: PartitionNumbersCallback,
        on_revoked: PartitionNumbersCallback,
        on_record: Callable[[InMessage], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._config = config
        self._metrics = metrics
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_record = on_record
        self._owned: frozenset[int] = frozenset()
        self._member: GroupMember | None = None
        self._closing = False
        self.instance_id = config.instance_id or socket.gethostname()
        # --- the ownership proof each transaction carries (``OffsetSource``) ---
        #: never set: the proof rides with transactions, it never needs one of its own
        self.offsets_pending = asyncio.Event()
        self._positions: list[TopicPartition] = []
        self._group_metadata: Any = None

    @property
    def owned(self) -> frozenset[int]:
        return self._owned

    def owns(self, task_id: str) -> bool:
        return partition_for(task_id, self._config.partitions) in self._owned

    async def assigned(self, assigned: list[TopicPartition]) -> None:
        self._read_group_state()
        partitions = [tp.partition for tp in assigned]
        self._metrics.rebalances.inc()
        await self._on_assigned(sorted(partitions))
        self._owned = frozenset(self._owned | set(partitions))
        self._metrics.owned_partitions.set(len(self._owned))
        log.info("coordination partitions assigned", extra={"partitions": sorted(partitions)})

    async def lost(self, lost: list[TopicPartition]) -> None:
        """The group dropped this member (its session timed out): the tasks
        stream elsewhere already."""
        log.warning(
            "coordination partitions lost", extra={"partitions": [tp.partition for tp in lost]}
        )
        await self.revoked(lost)

    async def revoked(self, revoked: list[TopicPartition]) -> None:
        self._read_group_state()
        if self._closing:
            return  # leaving at shutdown: the streams were stopped and checkpointed already
        partitions = [tp.partition for tp in revoked]
        # Stop claiming the tasks first, so discovery does not restart them.
        self._owned = frozenset(self._owned - set(partitions))
        self._metrics.owned_partitions.set(len(self._owned))
        if partitions:
            await self._on_revoked(sorted(partitions))
            log.info("coordination partitions revoked", extra={"partitions": sorted(partitions)})

    async def run(self) -> None:
        member = self._connect()
        await member.subscribe()
        backoff = KAFKA_RETRY.backoff()
        while True:
            try:
                # Consuming keeps the membership alive (and runs the rebalance
                # callbacks); the records are notes for the owner (``FollowHint``).
                messages = await member.consume(500, 1.0)
                self._read_group_state()
                self._deliver(messages)
                backoff.reset()
            except KafkaException as exc:
                log.warning("coordination consumer error; retrying", extra={"error": str(exc)})
                await KAFKA_RETRY.wait(backoff)

    def _deliver(self, messages: list[Message]) -> None:
        on_record = self._on_record
        if on_record is None:
            return
        for raw in messages:
            if raw.partition() in self._owned:
                on_record(in_message(raw))

    def _connect(self) -> GroupMember:
        config = self._config
        options = group_config(
            self._kafka,
            group_id=config.group_id,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            # Named per replica: the group's description shows who owns what.
            client_id=f"{self._kafka.client_id}-{self.instance_id}",
            # A revoke waits for in-flight acks and writes checkpoints
            # (seconds): the group must wait for it rather than evict us.
            rebalance_timeout_ms=max(60_000, config.session_timeout_ms),
            # A partition new to the group is read from its start: a note
            # written just before the first assignment still reaches its owner
            # ("latest" lost it: the end was looked up after the write). The
            # notes are few (each is deleted once acted on) and old ones ignored.
            offset_reset="earliest",
        )
        self._member = GroupMember(
            options,
            [config.tasks_topic],
            on_assigned=self.assigned,
            on_revoked=self.revoked,
            on_lost=self.lost,
        )
        return self._member

    # --- the ownership proof (``OffsetSource``) -------------------------------------

    def take_offsets(self) -> list[TopicPartition]:
        """This member's positions on the partitions it owns."""
        return [tp for tp in self._positions if tp.partition in self._owned]

    def current(self, offsets: list[TopicPartition]) -> tuple[list[TopicPartition], Any] | None:
        held = [tp for tp in offsets if tp.partition in self._owned]
        if not held or self._group_metadata is None:
            return None
        return held, self._group_metadata

    def offsets_committed(self, offsets: list[TopicPartition]) -> None:
        """(Nothing waits on them: they only prove ownership.)"""

    async def rejected(self) -> None:
        if self._member is not None:
            self._group_metadata = await self._member.confirmed_group_metadata("coordination")

    def _read_group_state(self) -> None:
        """Only where no ``consume`` runs: between rounds and in rebalance callbacks."""
        member = self._member
        if member is not None and self._kafka.transactions:
            self._group_metadata = member.group_metadata()
            self._positions = member.positions()

    async def aclose(self) -> None:
        """Leave the group (the caller has already stopped and checkpointed the streams)."""
        member, self._member = self._member, None
        if member is not None:
            self._closing = True
            self._owned = frozenset()
            await member.close()
