"""Kafka to platform, end to end: reports and metrics written to Kafka are
recorded on the emulator (a real port), through a real broker and a real
consumer group."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from support.e2e import bridge_config, config_env, consume_until, run_bridge
from support.kafka import (
    ConsumedRecord,
    KafkaService,
    OutRecord,
    consume,
    create_topics,
    produce,
)
from support.metrics import sample
from support.waiting import eventually

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, FaultSettings, HttpFaultRule
from bridge.transforms.reports import derived_report_id

pytestmark = pytest.mark.timeout(90)

AGENT = "agent-emulator-1"


def reports_config(
    emu: Emulator, kafka: KafkaService, new_topic: Callable[[str], str], **reports: Any
) -> BridgeConfig:
    return bridge_config(
        emu,
        kafka,
        new_topic,
        streams={"enabled": False},
        reports={
            "enabled": True,
            "reports_topic": new_topic("reports"),
            "metrics_topic": new_topic("metrics"),
            "group_id": new_topic("group"),
            "retry_initial_s": 0.05,
            "retry_max_s": 0.5,
            "commit_interval_s": 0.1,
            **kafka.group_settings,
            **reports,
        },
    )


def report(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "agent_id": AGENT,
        "id": f"ext-{i}",
        "input": f"job {i}",
        "llm_response": {"text": f"answer {i}"},
        "tokens": {"completion_tokens": i, "prompt_tokens": 2 * i},
        "is_success": i % 3 != 0,
        "result": f"result {i}",
        "duration": i / 10,
        "used_tools": ["search"] if i % 2 else [],
        **fields,
    }


def metrics_message(i: int) -> dict[str, Any]:
    return {
        "agent_id": AGENT,
        "execution_id": f"exec-{i}",
        "source": "sdk",
        "memory_thread_id": f"exec-{i}",
        "task": f"task {i}",
        "status": "completed",
        "duration": 1.25,
        "ai_model": "gpt-test",
        "llm_tokens": {"worker": {"completion_tokens": i, "prompt_tokens": i + 1}},
    }


async def setup_topics(kafka: KafkaService, config: BridgeConfig) -> None:
    await create_topics(
        kafka.bootstrap_servers,
        config.reports.reports_topic,
        config.reports.metrics_topic,
        partitions=2,
    )


async def send(
    kafka: KafkaService, topic: str, values: list[Any], key: bytes | None = None
) -> None:
    await produce(
        kafka.bootstrap_servers,
        topic,
        [OutRecord(v if isinstance(v, bytes) else orjson.dumps(v), key=key) for v in values],
    )


async def committed(kafka: KafkaService, config: BridgeConfig) -> int:
    """The group's committed offsets summed over the reports topic's partitions."""

    def read() -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": config.reports.group_id,
                "enable.auto.commit": False,
            }
        )
        try:
            topic = config.reports.reports_topic
            offsets = consumer.committed([TopicPartition(topic, p) for p in range(2)], 10)
            return sum(max(0, tp.offset) for tp in offsets)
        finally:
            consumer.close()

    return await asyncio.to_thread(read)


async def test_reports_and_metrics_are_recorded_field_by_field(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator() as emu:
        config = reports_config(emu, kafka, new_topic)
        await setup_topics(kafka, config)
        sent = [report(i) for i in range(1, 11)]
        sent.append({"result": "keyed", "is_success": True})  # agent from the key, id derived
        async with Bridge(config) as bridge:
            await send(kafka, config.reports.reports_topic, sent[:10])
            await send(kafka, config.reports.reports_topic, sent[10:], key=AGENT.encode())
            await send(kafka, config.reports.metrics_topic, [metrics_message(i) for i in range(5)])
            await eventually(
                lambda: len(emu.reports()) >= 11 and len(emu.metrics()) >= 5,
                timeout_s=30,
                what="recordings",
            )
            received = {r.key: r for r in emu.reports()}
            for message in sent[:10]:
                got = received[message["id"]]
                assert got.agent_id == AGENT
                for field in ("input", "llm_response", "is_success", "result", "duration"):
                    assert got.body[field] == message[field], field
                assert got.body["used_tools"] == message["used_tools"]
                assert (
                    got.body["tokens"]["completion_tokens"]
                    == message["tokens"]["completion_tokens"]
                )
                assert got.body["tokens"]["prompt_tokens"] == message["tokens"]["prompt_tokens"]
            derived = [k for k in received if k.startswith("ext-") is False]
            assert len(derived) == 1
            assert received[derived[0]].body["result"] == "keyed"
            metrics = {m.key: m for m in emu.metrics()}
            assert metrics["exec-3"].body["llm_tokens"]["worker"] == {
                "completion_tokens": 3,
                "prompt_tokens": 4,
            }
            assert metrics["exec-3"].body["ai_model"] == "gpt-test"
            # Each recorded report is mirrored on the events topic, source "report".
            mirrors = await consume_until(
                kafka, config.topics.events, lambda rs: len(rs) >= 11, max_wait=20
            )
            envelopes = [orjson.loads(r.required_value()) for r in mirrors]
            assert {e["source"] for e in envelopes} == {"report"}
            assert {e["task_id"] for e in envelopes} == set(received)
            statuses = {e["task_id"]: e["status"] for e in envelopes}
            assert statuses["ext-3"] == "failed"
            assert statuses["ext-1"] == "completed"
            assert all(emu.control.inbox.report_counts[k] == 1 for k in received)
            assert bridge.health.ready


async def test_5xx_and_429_are_retried_then_every_report_recorded_once(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    faults = FaultSettings(
        http=[
            HttpFaultRule(endpoints=["report"], status=503, next_n=8),
            HttpFaultRule(endpoints=["report"], status=429, next_n=4, retry_after_s=0.1),
        ]
    )
    async with Emulator(EmulatorSettings(faults=faults)) as emu:
        config = reports_config(emu, kafka, new_topic)
        await setup_topics(kafka, config)
        async with Bridge(config) as bridge:
            await send(
                kafka, config.reports.reports_topic, [report(i) for i in range(20)], key=b"k"
            )
            await eventually(
                lambda: len(emu.reports()) >= 1, timeout_s=30, what="the first recording"
            )
            await eventually(lambda: len(emu.reports()) >= 20, timeout_s=30, what="every recording")
            counts = emu.control.inbox.report_counts
            assert sorted(counts) == sorted(f"ext-{i}" for i in range(20))
            assert set(counts.values()) == {1}
            assert emu.stats()["injected_http"], "the faults must have fired"
            retries = "xpander_bridge_report_retries_total"
            assert sample(bridge.metrics, retries, kind="report", reason="unavailable") >= 8
            assert sample(bridge.metrics, retries, kind="report", reason="rate_limited") >= 4
            await eventually(
                lambda: _committed_in_bridge(bridge) == 20,
                timeout_s=10,
                what="offsets committed after recording",
            )
        assert await committed(kafka, config) == 20
        dlq = await consume(kafka.bootstrap_servers, [config.topics.dlq], max_wait=1)
        assert dlq == []


def _committed_in_bridge(bridge: Bridge) -> int:
    assert bridge.reports is not None
    return sum(max(0, p.committed) for p in bridge.reports._partitions.values())


async def test_poison_messages_go_to_the_dlq_and_the_rest_is_recorded(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    faults = FaultSettings(http=[HttpFaultRule(endpoints=["report"], status=422, next_n=1)])
    async with Emulator(EmulatorSettings(faults=faults)) as emu:
        config = reports_config(emu, kafka, new_topic)
        await setup_topics(kafka, config)
        poison = [
            b"{not json",
            orjson.dumps({**report(1), "is_sucess": True}),  # a typo
            orjson.dumps(report(2)),  # the platform answers 422
        ]
        good = [orjson.dumps(report(i)) for i in range(3, 8)]
        async with Bridge(config):
            # One key, one partition: strictly in this order.
            await send(kafka, config.reports.reports_topic, [*poison, *good], key=b"same")
            dead = await consume_until(kafka, config.topics.dlq, lambda rs: len(rs) >= 3)
            await eventually(lambda: len(emu.reports()) >= 5, timeout_s=20, what="the good reports")
        assert sorted(r.key for r in emu.reports()) == sorted(f"ext-{i}" for i in range(3, 8))
        by_reason = {r.header("dlq.reason"): r for r in dead}
        assert set(by_reason) == {b"invalid_report", b"platform_rejected"}
        values = sorted(r.required_value() for r in dead)
        assert values == sorted(poison)
        for record in dead:
            assert record.header("dlq.original_topic") == config.reports.reports_topic.encode()
            assert record.header("dlq.original_partition") is not None
            assert record.header("dlq.original_offset") is not None
            assert record.key == b"same"
        typo = next(r for r in dead if b"is_sucess" in (r.value or b""))
        assert b"is_sucess" in (typo.header("dlq.error") or b"")
        rejected = next(r for r in dead if r.header("dlq.reason") == b"platform_rejected")
        assert rejected.header("dlq.status") == b"422"
        assert rejected.value == poison[2]


async def test_401_halts_without_committing_or_dead_lettering_then_resumes(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator() as emu:
        config = reports_config(emu, kafka, new_topic)
        await setup_topics(kafka, config)
        async with Bridge(config) as bridge:
            await eventually(lambda: bridge.health.ready, timeout_s=20, what="ready")
            emu.set_api_key("rotated-elsewhere")
            await send(kafka, config.reports.reports_topic, [report(i) for i in range(6)])
            await eventually(
                lambda: sample(bridge.metrics, "xpander_bridge_reports_halted") == 1,
                timeout_s=20,
                what="the halt",
            )
            # Not a pause: the refused report is retried (and refused) a few
            # times, and none of those attempts may commit or dead-letter it.
            retries = "xpander_bridge_report_retries_total"
            await eventually(
                lambda: sample(bridge.metrics, retries, kind="report", reason="auth") >= 5,
                timeout_s=20,
                what="the refused report to be retried 5 times while halted",
            )
            assert not bridge.health.ready
            assert emu.reports() == []
            assert _committed_in_bridge(bridge) == 0
            assert await consume(kafka.bootstrap_servers, [config.topics.dlq], max_wait=0.5) == []
            api_key = config.platform.api_key
            assert api_key is not None
            emu.set_api_key(api_key.get_secret_value())
            await eventually(
                lambda: len(emu.reports()) >= 6, timeout_s=30, what="recording after the fix"
            )
            await eventually(lambda: bridge.health.ready, timeout_s=10, what="ready again")
            assert sample(bridge.metrics, "xpander_bridge_reports_halted") == 0
            await eventually(
                lambda: _committed_in_bridge(bridge) == 6, timeout_s=10, what="commits"
            )


@pytest.mark.timeout(120)
async def test_sigkill_and_restart_records_every_report_on_one_task_each(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    faults = FaultSettings(delay_s=0.005, delay_endpoints=["report"])
    async with Emulator(EmulatorSettings(faults=faults)) as emu:
        config = reports_config(emu, kafka, new_topic)
        await setup_topics(kafka, config)
        messages: list[Any] = [report(i) for i in range(150)]
        messages += [{"agent_id": AGENT, "result": f"no id {i}"} for i in range(150)]
        env = config_env(
            config, XPANDER_BRIDGE_HTTP__ENABLED="false", XPANDER_BRIDGE_LOGGING__FORMAT="json"
        )

        async def start() -> asyncio.subprocess.Process:
            return await run_bridge(
                env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )

        await send(kafka, config.reports.reports_topic, messages)
        first = await start()
        try:
            await eventually(
                lambda: len(emu.reports()) >= 60, timeout_s=40, what="recording under way"
            )
            first.send_signal(signal.SIGKILL)
            await first.wait()
        finally:
            if first.returncode is None:
                first.kill()
        seen_before_restart = len(emu.reports())
        assert seen_before_restart < len(messages), "killed too late to test anything"
        second = await start()
        try:
            await eventually(
                lambda: len(emu.control.inbox.report_counts) >= len(messages),
                timeout_s=60,
                what="all recorded",
            )
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 30) == 0
        finally:
            if second.returncode is None:
                second.kill()
        expected = {f"ext-{i}" for i in range(150)}
        # Messages without an id got one from (topic, partition, offset): a
        # redelivery after the kill names the same task again.
        partitions = {}
        records = await consume(kafka.bootstrap_servers, [config.reports.reports_topic], count=300)
        for record in records:
            if b'"id"' not in (record.value or b""):
                partitions[record.offset, record.partition] = derived_report_id(
                    record.topic, record.partition, record.offset
                )
        expected |= set(partitions.values())
        counts = emu.control.inbox.report_counts
        assert set(counts) == expected  # every report recorded, on exactly one task each
        report_tasks = [t for t in emu.control.tasks() if t["id"] in expected]
        assert len(report_tasks) == len(expected)


async def committed_offsets(kafka: KafkaService, config: BridgeConfig) -> dict[int, int]:
    """The group's committed offset per partition of the reports topic (0: none)."""

    def read() -> dict[int, int]:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": config.reports.group_id,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            topic = config.reports.reports_topic
            offsets = consumer.committed([TopicPartition(topic, p) for p in range(2)], 10)
            return {tp.partition: max(0, tp.offset) for tp in offsets}
        finally:
            consumer.close()

    return await asyncio.to_thread(read)


def outputs(records: list[ConsumedRecord], config: BridgeConfig) -> list[tuple[int, int]]:
    """The report messages, as (partition, offset), whose output is in ``records``:
    mirror envelopes (their task id names the message) and dead letters."""
    where: list[tuple[int, int]] = []
    for record in records:
        if record.topic == config.topics.dlq:
            partition = record.header("dlq.original_partition")
            offset = record.header("dlq.original_offset")
            assert partition is not None and offset is not None
            where.append((int(partition), int(offset)))
            continue
        value = orjson.loads(record.required_value())
        if value["task_id"].startswith("ext-"):
            partition, offset = value["task_id"].removeprefix("ext-").split("-")
            where.append((int(partition), int(offset)))
    return where


@pytest.mark.timeout(150)
async def test_sigkill_between_the_platform_call_and_the_commit_commits_offsets_and_output_together(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    """Each report's mirror envelope (or dead letter) and its consumer offset
    commit in one transaction: after a SIGKILL, the committed offsets cover
    exactly the messages whose output is committed, no more (a lost output)
    and no fewer (a repeat); the restarted bridge then handles the rest."""
    faults = FaultSettings(delay_s=0.003, delay_endpoints=["report"])
    async with Emulator(EmulatorSettings(faults=faults)) as emu:
        config = reports_config(emu, kafka, new_topic, commit_interval_s=0.05)
        await setup_topics(kafka, config)
        await create_topics(kafka.bootstrap_servers, config.topics.events, config.topics.dlq)
        # Each report's id names its partition and offset; every 7th is poison.
        reports = config.reports.reports_topic
        per_partition = 250
        for partition in range(2):
            values: list[Any] = [
                b"{not json" if offset % 7 == 3 else report(offset, id=f"ext-{partition}-{offset}")
                for offset in range(per_partition)
            ]
            await produce(
                kafka.bootstrap_servers,
                reports,
                [
                    OutRecord(orjson.dumps(v) if isinstance(v, dict) else v, partition=partition)
                    for v in values
                ],
            )
        env = config_env(
            config, XPANDER_BRIDGE_HTTP__ENABLED="false", XPANDER_BRIDGE_LOGGING__FORMAT="json"
        )
        first = await run_bridge(
            env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await eventually(
                lambda: len(emu.reports()) >= 120, timeout_s=40, what="recording under way"
            )
            first.send_signal(signal.SIGKILL)
            await first.wait()
        finally:
            if first.returncode is None:
                first.kill()
        offsets = await committed_offsets(kafka, config)
        topics = [config.topics.events, config.topics.dlq]
        # read_committed stops before the dead bridge's open transaction
        seen = outputs(await consume(kafka.bootstrap_servers, topics, max_wait=3.0), config)
        covered = {(p, o) for p, end in offsets.items() for o in range(end)}
        assert sum(offsets.values()) > 0, "nothing committed before the kill"
        assert sum(offsets.values()) < 2 * per_partition, "killed too late to test anything"
        assert sorted(seen) == sorted(covered), (
            f"offsets {offsets} cover {len(covered)} messages; their committed output "
            f"holds {len(seen)} (missing {sorted(covered - set(seen))[:5]}, "
            f"beyond {sorted(set(seen) - covered)[:5]})"
        )

        second = await run_bridge(
            env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await eventually(
                lambda: committed_everything(kafka, config, 2 * per_partition),
                timeout_s=60,
                what="every offset committed",
            )
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 30) == 0
        finally:
            if second.returncode is None:
                second.kill()
        seen = outputs(await consume(kafka.bootstrap_servers, topics, max_wait=3.0), config)
        everything = {(p, o) for p in range(2) for o in range(per_partition)}
        assert set(seen) == everything
        if kafka.hides_aborted_transactions:  # tansu shows the dead transaction's records
            assert len(seen) == len(everything), "a repeat"


async def committed_everything(kafka: KafkaService, config: BridgeConfig, total: int) -> bool:
    return sum((await committed_offsets(kafka, config)).values()) >= total
