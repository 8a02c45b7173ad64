"""Exactly-once after SIGKILL, end to end: replicas as real processes, the
emulator, a real broker, consumers reading committed.

Two claims, tested apart because the embedded broker can show only one:

- **What is committed is consistent**, at every instant: for every task, the
  committed envelopes have the sequences 1..n, each once, and the task's
  committed checkpoint says exactly n: the checkpoint neither lags nor leads
  what consumers can read. Read right after a SIGKILL, before anyone aborts
  the dead replica's open transaction (read_committed stops before it). This
  holds on any broker with transactions, tansu included.
- **No repeat, no gap across the kill**: the dead replica's open transaction
  is aborted, its successor resumes right after the last committed envelope,
  and a read_committed consumer sees every event exactly once. Needs a
  broker that hides aborted records from read_committed consumers (tansu
  shows them: ``aborted_transactions``), so it runs on Apache Kafka.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.e2e import all_finished
from support.kafka import ConsumedRecord, KafkaService, consume
from support.replicas import Replica, replica_env
from support.waiting import eventually
from test_scale import (
    check,
    checkpointed_mid_run,
    everything_in_kafka,
    grouped,
    prepare,
    scale_config,
    settled,
    streaming,
)

from bridge.config import BridgeConfig
from bridge.core.checkpoint import Checkpoint
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, StreamSettings

pytestmark = pytest.mark.timeout(240)

STREAMS = [
    StreamSettings(send_ids=True, honour_last_event_id=True),
    StreamSettings(send_ids=False, replay="full"),
]
STREAM_IDS = ["server-ids", "no-ids-full-replay"]


async def committed(kafka: KafkaService, topics: list[str], seconds: float) -> list[ConsumedRecord]:
    """Everything a read_committed consumer sees in ``seconds``."""
    return await consume(kafka.bootstrap_servers, topics, max_wait=seconds)


def assert_consistent(records: list[ConsumedRecord], config: BridgeConfig) -> int:
    """The committed state's invariant (module doc); returns the tasks checked."""
    sequences: dict[str, list[int]] = defaultdict(list)
    checkpoints: dict[str, Checkpoint | None] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        if record.topic == config.topics.events:
            envelope = orjson.loads(record.required_value())
            sequences[envelope["task_id"]].append(envelope["sequence"])
        elif record.topic == config.coordination.checkpoints_topic:
            task_id = (record.key or b"").decode()
            checkpoints[task_id] = None if record.value is None else Checkpoint.decode(record.value)
    assert sequences, "nothing committed before the kill"
    for task_id, seen in sequences.items():
        n = len(seen)
        assert sorted(seen) == list(range(1, n + 1)), f"{task_id}: not 1..n once each: {seen}"
        checkpoint = checkpoints.get(task_id)
        assert checkpoint is not None, f"{task_id}: committed envelopes without a checkpoint"
        assert checkpoint.sequence == n, (
            f"{task_id}: the committed checkpoint says {checkpoint.sequence}, "
            f"the committed envelopes end at {n}"
        )
    return len(sequences)


@pytest.mark.parametrize("stream", STREAMS, ids=STREAM_IDS)
async def test_after_sigkill_the_committed_checkpoints_match_the_committed_envelopes(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path, stream: StreamSettings
) -> None:
    async with Emulator(EmulatorSettings(stream=stream, seed=23)) as emu:
        config = scale_config(emu, kafka, new_topic)
        await prepare(kafka, config)
        env = replica_env(emu, config, "solo")
        first = await Replica("solo", env, tmp_path).start()
        try:
            await settled([first], config)
            emu.start_scenario(streaming(12, arrival_s=0.1, events=80, interval_s=0.03))
            await eventually(
                lambda: checkpointed_mid_run(kafka, config, 3),
                timeout_s=30,
                interval_s=0.1,
                what="checkpoints of 3 running tasks",
            )
            await first.kill()
            topics = [config.topics.events, config.coordination.checkpoints_topic]
            tasks = assert_consistent(await committed(kafka, topics, 3.0), config)
            # The same slot comes back (a StatefulSet pod, a restarted process):
            # its transactional id aborts the dead one's open transaction.
            second = await Replica("solo", env, tmp_path).start()
            try:
                await eventually(all_finished(emu, 12), timeout_s=90, what="every task to finish")
                records = await everything_in_kafka(kafka, config, emu, max_wait=60)
                assert await second.terminate() == 0
            finally:
                await second.aclose()
        finally:
            await first.aclose()
        assert tasks >= 3
        repeats = check(emu, grouped(records), ids=stream.send_ids)
        print(f"\nrepeats after the kill (read uncommitted): {repeats}")


@pytest.mark.requires_kafka("aborted_transactions")
@pytest.mark.parametrize("stream", STREAMS, ids=STREAM_IDS)
async def test_sigkill_and_restart_a_read_committed_consumer_sees_each_event_once(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path, stream: StreamSettings
) -> None:
    async with Emulator(EmulatorSettings(stream=stream, seed=29)) as emu:
        config = scale_config(emu, kafka, new_topic)
        await prepare(kafka, config)
        env = replica_env(emu, config, "solo")
        first = await Replica("solo", env, tmp_path).start()
        try:
            await settled([first], config)
            emu.start_scenario(streaming(12, arrival_s=0.1, events=60, interval_s=0.04))
            await eventually(
                lambda: checkpointed_mid_run(kafka, config, 3),
                timeout_s=30,
                interval_s=0.1,
                what="checkpoints of 3 running tasks",
            )
            await first.kill()
            await asyncio.sleep(1.0)  # the tasks go on with nobody listening
            second = await Replica("solo", env, tmp_path).start()
            try:
                await eventually(all_finished(emu, 12), timeout_s=90, what="every task to finish")
                await eventually(
                    lambda: finished_everywhere(kafka, config, 12),
                    timeout_s=60,
                    what="every task_finished committed",
                )
                records = await committed(kafka, [config.topics.events], 5.0)
                assert await second.terminate() == 0
            finally:
                await second.aclose()
        finally:
            await first.aclose()
        assert check(emu, grouped(records), ids=stream.send_ids) == 0, "a repeat"


async def finished_everywhere(kafka: KafkaService, config: BridgeConfig, tasks: int) -> bool:
    records = await committed(kafka, [config.topics.events], 2.0)
    return sum(1 for r in records if b'"type":"task_finished"' in (r.value or b"")) >= tasks


@pytest.mark.requires_kafka("aborted_transactions")
async def test_one_of_three_killed_a_read_committed_consumer_sees_each_event_once(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path
) -> None:
    async with Emulator(EmulatorSettings(seed=43)) as emu:
        config = scale_config(emu, kafka, new_topic)
        await prepare(kafka, config)
        env = replica_env(emu, config, "r")
        replicas = [
            Replica(f"r{i}", {**env, "XPANDER_BRIDGE_COORDINATION__INSTANCE_ID": f"r{i}"}, tmp_path)
            for i in range(3)
        ]
        for replica in replicas:
            await replica.start()
        try:
            await settled(replicas, config)
            emu.start_scenario(streaming(60, arrival_s=0.05, events=80, interval_s=0.05))
            await eventually(
                lambda: emu.stats()["events_sent"] > 800, timeout_s=60, what="events flowing"
            )
            await replicas[0].kill()  # not restarted: the broker aborts its transaction
            await eventually(all_finished(emu, 60), timeout_s=120, what="every task to finish")
            await eventually(
                lambda: finished_everywhere(kafka, config, 60),
                timeout_s=90,
                what="every task_finished committed",
            )
            records = await committed(kafka, [config.topics.events], 5.0)
            for replica in replicas[1:]:
                assert await replica.terminate() == 0
        finally:
            for replica in replicas:
                await replica.aclose()
        assert check(emu, grouped(records), ids=True) == 0, "a repeat"


@pytest.mark.requires_kafka("aborted_transactions", "generation_fencing")
async def test_a_zombie_woken_after_its_tasks_moved_commits_nothing(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """SIGSTOP one of two replicas past its session timeout: the other takes its
    tasks. SIGCONT: the zombie's transaction (open or about to be) must not
    commit (its producer epoch was bumped when the broker aborted it, or its
    ownership proof carries a generation the group has left), so a
    read_committed consumer still sees every event once."""
    async with Emulator(EmulatorSettings(seed=47)) as emu:
        config = scale_config(emu, kafka, new_topic)
        await prepare(kafka, config)
        env = replica_env(emu, config, "z")
        zombie, survivor = (
            Replica(name, {**env, "XPANDER_BRIDGE_COORDINATION__INSTANCE_ID": name}, tmp_path)
            for name in ("zombie", "survivor")
        )
        for replica in (zombie, survivor):
            await replica.start()
        try:
            await settled([zombie, survivor], config)
            emu.start_scenario(streaming(30, arrival_s=0.05, events=120, interval_s=0.05))
            await eventually(
                lambda: emu.stats()["events_sent"] > 600, timeout_s=60, what="events flowing"
            )
            assert zombie.process is not None
            zombie.process.send_signal(signal.SIGSTOP)
            partitions = config.coordination.partitions
            await eventually(
                lambda: owns_all(survivor, partitions),
                timeout_s=60,
                interval_s=0.2,
                what="the survivor owning every partition",
            )
            await asyncio.sleep(2.0)  # the survivor resumes the moved tasks
            zombie.process.send_signal(signal.SIGCONT)
            await eventually(all_finished(emu, 30), timeout_s=120, what="every task to finish")
            await eventually(
                lambda: finished_everywhere(kafka, config, 30),
                timeout_s=90,
                what="every task_finished committed",
            )
            records = await committed(kafka, [config.topics.events], 5.0)
            # fenced (exit 1), or still running as a member that owns nothing new
            assert zombie.exited() in (None, 1)
            assert await survivor.terminate() == 0
        finally:
            for replica in (zombie, survivor):
                if replica.process is not None and replica.exited() is None:
                    replica.process.send_signal(signal.SIGCONT)
                await replica.aclose()
        assert check(emu, grouped(records), ids=True) == 0, "the zombie committed a repeat"


async def owns_all(replica: Replica, partitions: int) -> bool:
    scrape = await replica.scrape()
    return scrape is not None and scrape.get("xpander_bridge_owned_partitions") == partitions
