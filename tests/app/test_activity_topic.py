"""The activity topic, end to end: the emulator on a real port, a real broker,
the bridge in-process (or as a process, for the SIGKILL). Each ended task's
activity thread is on the topic once, as the platform served it; large threads
in parts; failures retried or dead-lettered; a kill in between loses nothing."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from support.e2e import bridge_config, discovery_ready
from support.emulators import completing_tasks
from support.kafka import ConsumedRecord, KafkaService, consume
from support.replicas import Replica, replica_env
from support.waiting import eventually
from test_scale import settled
from xpander_sdk.models.activity import AgentActivityThread

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.core.checkpoint import Checkpoint
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, FaultSettings, HttpFaultRule
from bridge.envelope import ActivityAssembler, read_activity
from bridge.wire import API_KEY_HEADER, Route
from bridge.wire import path as route_path

pytestmark = pytest.mark.timeout(120)

AGENTS = ["agent-emulator-1", "agent-emulator-2"]


def settings(**fields: Any) -> EmulatorSettings:
    emulator = EmulatorSettings(agent_ids=AGENTS, **fields)
    emulator.tasks = completing_tasks(12, chunk=2.0, tool_call=2.0, think=1.0)
    return emulator


def config(
    emu: Emulator, kafka: KafkaService, new_topic: Callable[[str], str], **sections: Any
) -> BridgeConfig:
    return bridge_config(
        emu, kafka, new_topic, topics={"activity": new_topic("activity")}, **sections
    )


async def served_thread(emu: Emulator, agent_id: str, task_id: str) -> bytes:
    url = emu.base_url + route_path(Route.ACTIVITY_LOG, agent_id=agent_id, task_id=task_id)
    async with httpx.AsyncClient() as client:
        response = await client.get(url, headers={API_KEY_HEADER: emu.api_key}, timeout=30)
    response.raise_for_status()
    return response.content


def threads(records: list[ConsumedRecord]) -> dict[str, list[Any]]:
    """Per task, every thread reassembled from the records (a repeat shows twice)."""
    assembler = ActivityAssembler()
    found: dict[str, list[Any]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        envelope = read_activity(record.required_value(), record.headers)
        thread = assembler.add(envelope)
        if thread is not None:
            found[envelope.task_id].append(thread)
    return found


async def read_threads(
    kafka: KafkaService, topic: str, tasks: set[str], max_wait: float = 60
) -> list[ConsumedRecord]:
    def done(records: list[ConsumedRecord]) -> bool:
        return tasks <= set(threads(records))

    records = await consume(kafka.bootstrap_servers, [topic], until=done, max_wait=max_wait)
    assert done(records), f"threads of {tasks - set(threads(records))} missing"
    return records


async def run_tasks(emu: Emulator, per_agent: int) -> list[dict[str, Any]]:
    created = [
        emu.create_task(agent_id=agent, events=12) for agent in AGENTS for _ in range(per_agent)
    ]
    for task in created:
        await emu.control.wait_finished(task["id"], 30)
    return created


async def checkpoints(kafka: KafkaService, config: BridgeConfig) -> dict[str, Checkpoint]:
    topic = config.coordination.checkpoints_topic
    latest: dict[str, Checkpoint] = {}
    for record in await consume(kafka.bootstrap_servers, [topic], max_wait=2.0):
        if record.value is not None and (checkpoint := Checkpoint.decode(record.value)):
            latest[checkpoint.task_id] = checkpoint
    return latest


async def test_every_ended_task_has_exactly_one_activity_record_shaped_like_the_sdks(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator(settings(seed=3)) as emu:
        cfg = config(emu, kafka, new_topic)
        async with Bridge(cfg) as bridge:
            await discovery_ready(bridge)
            created = await run_tasks(emu, per_agent=3)
            ids = {task["id"] for task in created}
            records = await read_threads(kafka, cfg.topics.activity, ids)
            await asyncio.sleep(1.0)  # anything repeated would show by now
            records = await consume(kafka.bootstrap_servers, [cfg.topics.activity], max_wait=3)
        found = threads(records)
        assert set(found) == ids
        for task in created:
            (thread,) = found[task["id"]]
            AgentActivityThread.model_validate(thread)  # the SDK's model reads it
            served = orjson.loads(await served_thread(emu, task["agent_id"], task["id"]))
            assert thread == served
        for record in records:
            envelope = read_activity(record.required_value(), record.headers)
            assert record.key == envelope.task_id.encode()
            assert envelope.agent_id in AGENTS and envelope.organization_id == emu.organization_id
            assert envelope.status == "completed" and envelope.parts == 1


async def test_a_thread_over_the_record_limit_goes_through_parts_with_nothing_lost(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator(settings(seed=4, activity_min_bytes=3_000_000)) as emu:
        cfg = config(emu, kafka, new_topic, activity={"max_part_bytes": 65_536})
        async with Bridge(cfg) as bridge:
            await discovery_ready(bridge)
            created = await run_tasks(emu, per_agent=1)
            records = await read_threads(kafka, cfg.topics.activity, {t["id"] for t in created})
        assert all(len(r.required_value()) <= 65_536 for r in records)
        found = threads(records)
        for task in created:
            served = await served_thread(emu, task["agent_id"], task["id"])
            assert len(served) >= 3_000_000
            mine = [
                read_activity(r.required_value()) for r in records if r.key == task["id"].encode()
            ]
            assert len(mine) == mine[0].parts > 40
            assert (
                "".join(e.chunk or "" for e in sorted(mine, key=lambda e: e.part)).encode()
                == served
            )
            assert found[task["id"]] == [orjson.loads(served)]


async def test_5xx_and_429_are_retried_and_a_404_is_dead_lettered_and_final(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator(settings(seed=5)) as emu:
        cfg = config(emu, kafka, new_topic)
        async with Bridge(cfg) as bridge:
            await discovery_ready(bridge)
            emu.set_faults(
                http=[
                    HttpFaultRule(endpoints=["activity"], status=503, next_n=2),
                    HttpFaultRule(endpoints=["activity"], status=429, next_n=1, retry_after_s=0.2),
                ]
            )
            retried = await run_tasks(emu, per_agent=1)
            await read_threads(kafka, cfg.topics.activity, {t["id"] for t in retried})
            registry = bridge.metrics.registry
            failures = "xpander_bridge_activity_fetch_failures_total"
            assert (registry.get_sample_value(failures, {"reason": "unavailable"}) or 0) >= 2
            assert (registry.get_sample_value(failures, {"reason": "rate_limited"}) or 0) >= 1

            emu.set_faults(http=[HttpFaultRule(endpoints=["activity"], status=404, share=1.0)])
            (gone,) = [emu.create_task(agent_id=AGENTS[0], events=8)]
            await emu.control.wait_finished(gone["id"], 30)

            def dead_lettered(records: list[ConsumedRecord]) -> bool:
                return any(
                    r.header("dlq.reason") == b"activity_rejected"
                    and r.header("dlq.task_id") == gone["id"].encode()
                    for r in records
                )

            dlq = await consume(
                kafka.bootstrap_servers, [cfg.topics.dlq], until=dead_lettered, max_wait=30
            )
            assert dead_lettered(dlq)
            (rejected,) = [r for r in dlq if r.header("dlq.task_id") == gone["id"].encode()]
            assert rejected.header("dlq.status") == b"404"

            async def final() -> bool:
                checkpoint = (await checkpoints(kafka, cfg)).get(gone["id"])
                return checkpoint is not None and checkpoint.final

            await eventually(final, timeout_s=20, what="the final checkpoint after the DLQ record")


async def test_an_agent_that_opted_out_gets_no_activity_record(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator(settings(seed=6)) as emu:
        cfg = config(emu, kafka, new_topic, activity={"exclude_agent_ids": [AGENTS[1]]})
        async with Bridge(cfg) as bridge:
            await discovery_ready(bridge)
            created = await run_tasks(emu, per_agent=2)
            kept = {t["id"] for t in created if t["agent_id"] == AGENTS[0]}
            await read_threads(kafka, cfg.topics.activity, kept)

            async def all_final() -> bool:
                latest = await checkpoints(kafka, cfg)
                return all(t["id"] in latest and latest[t["id"]].final for t in created)

            await eventually(all_final, timeout_s=20, what="every final checkpoint")
            records = await consume(kafka.bootstrap_servers, [cfg.topics.activity], max_wait=2)
        assert set(threads(records)) == kept


async def test_a_sigkill_between_a_tasks_end_and_its_activity_record_still_yields_it(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path
) -> None:
    async with Emulator(settings(seed=7)) as emu:
        cfg = config(emu, kafka, new_topic)
        env = replica_env(emu, cfg, "solo")
        # The activity endpoint fails: the task ends, its end is checkpointed
        # with the thread still due, and the bridge is killed in that window.
        emu.set_faults(http=[HttpFaultRule(endpoints=["activity"], status=503, share=1.0)])
        first = await Replica("solo", env, tmp_path).start()
        try:
            await settled([first], cfg)
            task = emu.create_task(agent_id=AGENTS[0], events=10)
            await emu.control.wait_finished(task["id"], 30)

            async def due() -> bool:
                checkpoint = (await checkpoints(kafka, cfg)).get(task["id"])
                return checkpoint is not None and checkpoint.finished and checkpoint.activity_due

            await eventually(due, timeout_s=30, what="a finished checkpoint with activity due")
            await first.kill()
        finally:
            await first.aclose()
        nothing = await consume(kafka.bootstrap_servers, [cfg.topics.activity], max_wait=1)
        assert not nothing, "the thread could not have been fetched"

        emu.set_faults(FaultSettings())
        second = await Replica("solo", env, tmp_path).start()
        try:
            records = await read_threads(kafka, cfg.topics.activity, {task["id"]}, max_wait=60)

            async def final() -> bool:
                checkpoint = (await checkpoints(kafka, cfg)).get(task["id"])
                return checkpoint is not None and checkpoint.final

            await eventually(final, timeout_s=20, what="the final checkpoint")
            assert await second.terminate() == 0
        finally:
            await second.aclose()
        (thread,) = threads(records)[task["id"]]
        assert thread == orjson.loads(await served_thread(emu, AGENTS[0], task["id"]))
