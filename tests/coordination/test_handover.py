"""The handover of task partitions between replicas, against a real broker:
what an assignment loads (and tombstones), what a revoke releases and
checkpoints, and what discovery sees through ``ReplicaClaims``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support.kafka import KafkaService, OutRecord, create_topics, produce
from support.publishing import RecordingPublish
from support.waiting import eventually

from bridge.config import CoordinationConfig, KafkaConfig
from bridge.coordination.checkpointer import Checkpointer
from bridge.coordination.checkpoints import load_checkpoints
from bridge.coordination.handover import Handover, ReplicaClaims
from bridge.coordination.ownership import Ownership
from bridge.coordination.partitioning import partition_for
from bridge.core.checkpoint import Checkpoint, now
from bridge.core.task import PendingEnvelope, TaskState
from bridge.observability.health import Health
from bridge.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(60)

PARTITIONS = 4
RETENTION_S = 3600.0


def task_id(partition: int, name: str) -> str:
    """A task id that ``partition_for`` puts in ``partition``."""
    for n in itertools.count():
        candidate = f"{name}-{n}"
        if partition_for(candidate, PARTITIONS) == partition:
            return candidate
    raise AssertionError("unreachable")


def checkpoint(task: str, sequence: int, *, finished: bool = False, age_s: float = 1.0) -> bytes:
    return Checkpoint(
        task_id=task,
        agent_id="agent-1",
        organization_id="org-1",
        sequence=sequence,
        last_sse_id=str(sequence),
        last_event_id=f"e{sequence}",
        last_stream_event_id=f"e{sequence}",
        first_event_id="e1",
        status="completed" if finished else "executing",
        finished=finished,
        written_at=now() - age_s,
    ).encode()


def at(task: str, value: bytes | None) -> OutRecord:
    return OutRecord(value, key=task.encode(), partition=partition_for(task, PARTITIONS))


def acked_task(task: str, sequence: int, *, finished: bool = False) -> TaskState:
    """A followed task whose envelopes 1..sequence are all in Kafka."""
    state = TaskState(task, "agent-1", "org-1")
    for n in range(1, sequence + 1):
        state.sequence = n
        state.track(PendingEnvelope(n, str(n), f"e{n}", "executing", True))
        state.delivered(n)
    state.finished = finished
    return state


@dataclass
class StreamOwner:
    """The supervisor, as far as the handover uses it: follows ``tasks``, and
    records every ``release`` predicate it was given."""

    tasks: dict[str, TaskState] = field(default_factory=dict)
    asked: list[Callable[[str], bool]] = field(default_factory=list)
    #: task ids whose activity thread it was asked to publish
    activity: list[str] = field(default_factory=list)

    async def release(self, which: Callable[[str], bool]) -> list[TaskState]:
        self.asked.append(which)
        leaving = [t for t in self.tasks if which(t)]
        return [self.tasks.pop(t) for t in leaving]

    def fetch_activity(self, checkpoint: Checkpoint) -> None:
        self.activity.append(checkpoint.task_id)


@dataclass
class Rig:
    handover: Handover
    checkpointer: Checkpointer
    publish: RecordingPublish
    owner: StreamOwner
    health: Health
    relist: asyncio.Event
    config: CoordinationConfig
    kafka: KafkaConfig


async def make_rig(
    kafka: KafkaService, new_topic: Callable[[str], str], *, checkpoint_interval_s: float = 0.1
) -> Rig:
    config = CoordinationConfig(
        tasks_topic=new_topic("tasks"),
        checkpoints_topic=new_topic("checkpoints"),
        group_id=new_topic("owners"),
        partitions=PARTITIONS,
        checkpoint_interval_s=checkpoint_interval_s,
        checkpoint_retention_s=RETENTION_S,
        **kafka.group_settings,
    )
    await create_topics(
        kafka.bootstrap_servers,
        config.tasks_topic,
        config.checkpoints_topic,
        partitions=PARTITIONS,
        configs={"cleanup.policy": "compact"},
    )
    kafka_config = KafkaConfig(bootstrap_servers=kafka.bootstrap_servers.split(","))
    metrics = Metrics()
    publish, owner, health, relist = (
        RecordingPublish(),
        StreamOwner(),
        Health(metrics),
        asyncio.Event(),
    )
    checkpointer = Checkpointer(config, publish, metrics)
    handover = Handover(
        kafka_config, config, checkpointer, publish, health, streams=owner, relist=relist
    )
    return Rig(handover, checkpointer, publish, owner, health, relist, config, kafka_config)


# task ids by partition, for the stored checkpoints
LIVE = task_id(0, "live")  # two checkpoints: the later one counts
REMOVED = task_id(0, "removed")  # a checkpoint, then its tombstone
EXPIRED = task_id(1, "expired")  # finished, written before the retention
RECENT = task_id(1, "recent")  # finished, within the retention
ELSEWHERE = task_id(2, "elsewhere")  # a partition not assigned


async def store_checkpoints(kafka: KafkaService, topic: str) -> None:
    await produce(
        kafka.bootstrap_servers,
        topic,
        [
            at(LIVE, checkpoint(LIVE, 3)),
            at(LIVE, checkpoint(LIVE, 7)),
            at(REMOVED, checkpoint(REMOVED, 4)),
            at(REMOVED, None),
            at(EXPIRED, checkpoint(EXPIRED, 9, finished=True, age_s=2 * RETENTION_S)),
            at(RECENT, checkpoint(RECENT, 5, finished=True, age_s=10)),
            at(ELSEWHERE, checkpoint(ELSEWHERE, 2)),
        ],
    )


async def test_assigned_loads_exactly_the_given_partitions_and_tombstones_expired_ones(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    rig = await make_rig(kafka, new_topic)
    await store_checkpoints(kafka, rig.config.checkpoints_topic)
    assert not rig.relist.is_set()

    await rig.handover.assigned([0, 1, 3])

    live = rig.handover.checkpoint(LIVE)
    assert live is not None and live.sequence == 7, "the latest checkpoint of a task"
    assert rig.handover.checkpoint(REMOVED) is None, "a tombstone removes the checkpoint"
    recent = rig.handover.checkpoint(RECENT)
    assert recent is not None and recent.finished
    assert rig.handover.checkpoint(ELSEWHERE) is None, "partition 2 was not assigned"
    # The expired finished checkpoint gets its tombstone, in its own partition.
    (tombstone,) = rig.publish.records
    assert tombstone.topic == rig.config.checkpoints_topic
    assert tombstone.key == EXPIRED.encode()
    assert tombstone.value is None
    assert tombstone.partition == partition_for(EXPIRED, PARTITIONS) == 1
    assert rig.relist.is_set(), "discovery is asked to list now"
    assert rig.health.conditions()["coordination"]["ok"] is True
    assert rig.owner.asked == [], "an assignment releases nothing"


async def test_a_later_assignment_adds_to_what_was_loaded(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    rig = await make_rig(kafka, new_topic)
    await store_checkpoints(kafka, rig.config.checkpoints_topic)
    await rig.handover.assigned([2])
    assert rig.handover.checkpoint(ELSEWHERE) is not None
    assert rig.handover.checkpoint(LIVE) is None
    await rig.handover.assigned([0])
    assert rig.handover.checkpoint(LIVE) is not None
    assert rig.handover.checkpoint(ELSEWHERE) is not None, "kept: partition 2 did not move"


async def test_assigned_with_no_partitions_still_makes_coordination_ready(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # More replicas than partitions: this one owns nothing, and is ready.
    rig = await make_rig(kafka, new_topic)
    await rig.handover.assigned([])
    assert rig.health.conditions()["coordination"]["ok"] is True
    assert rig.relist.is_set()
    assert rig.publish.records == []


async def test_revoked_releases_and_checkpoints_only_the_moving_partitions(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    rig = await make_rig(kafka, new_topic)
    await store_checkpoints(kafka, rig.config.checkpoints_topic)
    await rig.handover.assigned([0, 1, 2])
    rig.publish.records.clear()
    streaming = {t: acked_task(t, 3) for t in (task_id(0, "run"), task_id(1, "run"))}
    staying = task_id(2, "run")
    rig.owner.tasks = {**streaming, staying: acked_task(staying, 3)}
    for followed in rig.owner.tasks.values():  # as the supervisor's on_follow does
        rig.checkpointer.watch(followed)
    # Ended tasks the checkpointer still watches (their final write pending).
    ended_leaving, ended_staying = task_id(0, "ended"), task_id(3, "ended")
    rig.checkpointer.watch(acked_task(ended_leaving, 6, finished=True))
    rig.checkpointer.watch(acked_task(ended_staying, 6, finished=True))

    await rig.handover.revoked([0, 1])

    (which,) = rig.owner.asked
    sample = [f"task-{n}" for n in range(400)]
    assert [t for t in sample if which(t)] == [
        t for t in sample if partition_for(t, PARTITIONS) in (0, 1)
    ]
    assert set(rig.owner.tasks) == {staying}, "the staying task is still followed"
    written = {
        (r.key or b"").decode(): (Checkpoint.decode(r.value or b""), r.partition)
        for r in rig.publish.records
    }
    assert len(written) == len(rig.publish.records), "one checkpoint per task"
    assert set(written) == {*streaming, ended_leaving}
    for task, (stored, partition) in written.items():
        assert stored is not None
        assert stored.task_id == task
        assert partition == partition_for(task, PARTITIONS)
        assert stored.sequence == (6 if task == ended_leaving else 3)
    assert {r.topic for r in rig.publish.records} == {rig.config.checkpoints_topic}
    assert {t.task_id for t in rig.checkpointer.watched(lambda _: True)} == {
        staying,
        ended_staying,
    }
    # Checkpoints of the moving partitions are forgotten; the others kept.
    assert rig.handover.checkpoint(LIVE) is None
    assert rig.handover.checkpoint(RECENT) is None
    assert rig.handover.checkpoint(ELSEWHERE) is not None


async def test_revoked_returns_only_once_kafka_has_the_checkpoints(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # The group moves on when revoked returns: the next owner must find them.
    rig = await make_rig(kafka, new_topic, checkpoint_interval_s=2.0)  # 20 s flush timeout
    leaving = task_id(1, "run")
    rig.owner.tasks = {leaving: acked_task(leaving, 4)}
    rig.publish.hold = True
    revoking = asyncio.create_task(rig.handover.revoked([1]))
    await eventually(
        lambda: bool(rig.publish.records), timeout_s=10, what="the checkpoint handed over"
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert not revoking.done()
    rig.publish.ack()
    await asyncio.wait_for(revoking, 5)


async def test_replica_claims_follow_the_ownership_and_the_loaded_checkpoints(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    rig = await make_rig(kafka, new_topic)
    await store_checkpoints(kafka, rig.config.checkpoints_topic)
    ownership = Ownership(
        rig.kafka,
        rig.config,
        Metrics(),
        on_assigned=rig.handover.assigned,
        on_revoked=rig.handover.revoked,
    )
    claims = ReplicaClaims(ownership, rig.handover, RETENTION_S)
    assert claims.catch_up_window_s == RETENTION_S
    assert not claims.owns(LIVE)
    tasks_topic = rig.config.tasks_topic
    # What the group's rebalance listener calls.
    await ownership.assigned([TopicPartition(tasks_topic, 0), TopicPartition(tasks_topic, 2)])
    assert claims.owns(LIVE) and claims.owns(ELSEWHERE)
    assert not claims.owns(RECENT)
    checkpoint_of_live = claims.checkpoint(LIVE)
    assert checkpoint_of_live is not None and checkpoint_of_live.sequence == 7
    assert claims.checkpoint(RECENT) is None
    await ownership.revoked([TopicPartition(tasks_topic, 0)])
    assert not claims.owns(LIVE)
    assert claims.checkpoint(LIVE) is None
    assert claims.owns(ELSEWHERE)
    assert claims.checkpoint(ELSEWHERE) is not None


async def test_joining_the_group_loads_every_partition_through_the_handover(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    rig = await make_rig(kafka, new_topic)
    await store_checkpoints(kafka, rig.config.checkpoints_topic)
    ownership = Ownership(
        rig.kafka,
        rig.config,
        Metrics(),
        on_assigned=rig.handover.assigned,
        on_revoked=rig.handover.revoked,
    )
    claims = ReplicaClaims(ownership, rig.handover, RETENTION_S)
    member = asyncio.create_task(ownership.run())
    try:
        await eventually(
            lambda: ownership.owned == set(range(PARTITIONS)), timeout_s=30, what="the assignment"
        )
        assert rig.relist.is_set()
        assert all(claims.owns(t) for t in (LIVE, RECENT, ELSEWHERE))
        assert claims.checkpoint(ELSEWHERE) is not None
        assert [r.key for r in rig.publish.records] == [EXPIRED.encode()]
    finally:
        member.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await member
        await ownership.aclose()


async def test_a_checkpoint_in_an_open_transaction_is_not_loaded(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # A replica died mid-transaction: its last checkpoint covers envelopes no
    # read_committed consumer will ever see, so the next owner must not resume
    # from it (nor wait for it: the load ends at the last stable offset).
    topic = new_topic("checkpoints")
    await create_topics(kafka.bootstrap_servers, topic, partitions=1)

    def write() -> Producer:
        producer = Producer(
            {"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": new_topic("dead")}
        )
        producer.init_transactions(10)
        producer.begin_transaction()
        producer.produce(topic, checkpoint("t-1", 5), b"t-1", partition=0)
        producer.commit_transaction(10)
        producer.begin_transaction()
        producer.produce(topic, checkpoint("t-1", 9), b"t-1", partition=0)
        assert producer.flush(10) == 0  # in the log, never committed
        return producer

    dead = await asyncio.to_thread(write)
    loaded = await load_checkpoints(
        KafkaConfig(bootstrap_servers=kafka.bootstrap_servers.split(",")), topic, [0], timeout_s=20
    )
    assert loaded["t-1"].sequence == 5
    del dead


async def test_a_new_member_moves_only_the_partitions_it_takes(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # The cooperative protocol: when a second replica joins, the first gives up
    # only what moves to it, and is never asked to revoke what it keeps.
    rig = await make_rig(kafka, new_topic)
    revoked: dict[str, list[int]] = {"first": [], "second": []}
    members: list[tuple[Ownership, asyncio.Task[None]]] = []

    def member(name: str) -> Ownership:
        async def on_revoked(partitions: list[int]) -> None:
            revoked[name].extend(partitions)

        ownership = Ownership(
            rig.kafka,
            rig.config.model_copy(update={"instance_id": name}),
            Metrics(),
            on_assigned=rig.handover.assigned,
            on_revoked=on_revoked,
        )
        members.append((ownership, asyncio.create_task(ownership.run())))
        return ownership

    try:
        first = member("first")
        await eventually(
            lambda: first.owned == set(range(PARTITIONS)), timeout_s=30, what="first owns all"
        )
        second = member("second")
        await eventually(
            lambda: (
                first.owned | second.owned == set(range(PARTITIONS))
                and bool(first.owned)
                and bool(second.owned)
                and not first.owned & second.owned
            ),
            timeout_s=60,
            what="the partitions shared between the two",
        )
        assert sorted(revoked["first"]) == sorted(second.owned), "only what moved was revoked"
    finally:
        for ownership, task in members:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await ownership.aclose()


async def test_the_ownership_proof_commits_with_a_transaction(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    # What every transaction of the replica carries (KIP-447): its positions on
    # the partitions it owns, with its group metadata; the broker takes them.
    rig = await make_rig(kafka, new_topic)
    await produce(kafka.bootstrap_servers, rig.config.tasks_topic, [OutRecord(b"x", partition=1)])
    ownership = Ownership(
        rig.kafka,
        rig.config,
        Metrics(),
        on_assigned=rig.handover.assigned,
        on_revoked=rig.handover.revoked,
    )
    member = asyncio.create_task(ownership.run())
    try:
        await eventually(
            lambda: len(ownership.take_offsets()) == PARTITIONS,
            timeout_s=30,
            what="a position on every owned partition",
        )
        proof = ownership.current(ownership.take_offsets())
        assert proof is not None
        offsets, metadata = proof
        # the end of each partition (nothing consumed is needed: latest)
        assert {tp.partition: tp.offset for tp in offsets} == {0: 0, 1: 1, 2: 0, 3: 0}
        await asyncio.to_thread(commit_offsets, kafka.bootstrap_servers, offsets, metadata)
        committed = await asyncio.to_thread(
            committed_offsets, kafka.bootstrap_servers, rig.config.group_id, offsets
        )
        assert committed == {0: 0, 1: 1, 2: 0, 3: 0}
    finally:
        member.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await member
        await ownership.aclose()


def commit_offsets(bootstrap_servers: str, offsets: list[TopicPartition], metadata: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap_servers, "transactional.id": "proof"})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.send_offsets_to_transaction(offsets, metadata, 10)
    producer.commit_transaction(10)


def committed_offsets(
    bootstrap_servers: str, group_id: str, offsets: list[TopicPartition]
) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id})
    try:
        return {tp.partition: tp.offset for tp in consumer.committed(offsets, 10)}
    finally:
        consumer.close()
