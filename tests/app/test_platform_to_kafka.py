"""Platform to Kafka, end to end: the emulator on a real port, a real broker,
the bridge in-process. Events are counted by consuming the topics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest
from support.e2e import (
    all_finished,
    bridge_config,
    by_task,
    consume_envelopes,
    consume_until,
    covers,
    discovery_ready,
    expected_events,
)
from support.kafka import KafkaService, consume, described
from support.metrics import sample
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator
from bridge.emulator.settings import (
    EmulatorSettings,
    FaultSettings,
    HttpFaultRule,
    ScenarioSettings,
    StreamSettings,
    TaskProfile,
)
from bridge.sinks.kafka.producer import KafkaSink
from bridge.sources.platform.sse import SSEDecoder
from bridge.wire import TERMINAL_STATUSES

pytestmark = pytest.mark.timeout(90)

CE_HEADERS = {
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "content-type",
}


def scenario(tasks: int, events: int = 15, streaming_share: float = 0.75) -> ScenarioSettings:
    return ScenarioSettings(
        task_count=tasks,
        arrival_interval_s=0.01,
        streaming_share=streaming_share,
        profile=TaskProfile(events_per_task=events, event_interval_s=0.003, events_jitter=0.3),
    )


async def run_to_completion(
    emu: Emulator, bridge: Bridge, kafka: KafkaService, tasks: int
) -> dict[str, list[dict[str, object]]]:
    await discovery_ready(bridge)
    emu.start_scenario(emu.settings.scenario)
    await eventually(all_finished(emu, tasks), timeout_s=40, what="every emulator task to finish")
    expected = expected_events(emu)
    # Streaming tasks: every emitted event plus one `connected` per connection;
    # polled tasks: at least one status envelope each.
    everyone = {t["id"] for t in emu.control.tasks()}  # sub-tasks included
    records = await consume_until(kafka, bridge.config.topics.events, covers(expected, everyone))
    for record in records:
        assert {name for name, _ in record.headers} >= CE_HEADERS
        envelope = orjson.loads(record.required_value())
        assert record.key == envelope["task_id"].encode()
        assert record.header("ce_id") == envelope["event_id"].encode()
    return by_task(records)


def assert_stream_matches(
    emitted: list[tuple[str, bytes]], published: list[dict[str, object]]
) -> None:
    sse = [e for e in published if e["source"] == "sse" and e["type"] != "connected"]
    assert [e["type"] for e in sse] == [t for t, _ in emitted]
    for envelope, (_, raw) in zip(sse, emitted, strict=True):
        assert envelope["data"] == orjson.loads(raw)["data"]
    sequences = [e["sequence"] for e in published]
    assert sequences == list(range(1, len(published) + 1)), "sequence must be gapless and ordered"


#: ``kafka.transaction_pipeline`` off and on: one producer, or two taking turns
PIPELINE = pytest.mark.parametrize("pipeline", [False, True], ids=["one-producer", "pipelined"])


@PIPELINE
async def test_every_emitted_event_arrives_in_order_with_headers(
    kafka: KafkaService, new_topic: Callable[[str], str], pipeline: bool
) -> None:
    settings = EmulatorSettings(scenario=scenario(tasks=16), seed=3)
    async with (
        Emulator(settings) as emu,
        Bridge(
            bridge_config(emu, kafka, new_topic, kafka={"transaction_pipeline": pipeline})
        ) as bridge,
    ):
        if pipeline:
            # (whether two transactions overlap here depends on the machine's
            # timing: tests/pipeline/test_transactions.py makes them overlap)
            assert bridge.partner_sink is not None and bridge.partner_sink.connected
        published = await run_to_completion(emu, bridge, kafka, 16)
        expected = expected_events(emu)
        assert expected, "the scenario must have streaming tasks"
        for task_id, emitted in expected.items():
            assert_stream_matches(emitted, published[task_id])
        types = {e["type"] for events in published.values() for e in events}
        assert "future_insight" in types or "context_status" in types, types
        for task in emu.control.tasks():
            finished = [e for e in published[task["id"]] if e["type"] == "task_finished"]
            assert len(finished) == 1, task
            assert finished[0]["status"] == task["status"] in TERMINAL_STATUSES
            if not task["events_streaming"]:
                # polled, or ended before the first look (then fetched: resync)
                assert finished[0]["source"] in ("poll", "resync")


@pytest.mark.parametrize("server_ids", [True, False], ids=["with-ids", "without-ids"])
async def test_dropped_streams(
    kafka: KafkaService, new_topic: Callable[[str], str], server_ids: bool
) -> None:
    """With ids: resume with Last-Event-ID, no gap, no duplicate. Without ids (and
    no replay): events sent while disconnected are gone, but every terminal
    status still arrives, from the resync."""
    settings = EmulatorSettings(
        scenario=scenario(tasks=8, events=30, streaming_share=1.0),
        stream=StreamSettings(send_ids=server_ids, honour_last_event_id=server_ids),
        faults=FaultSettings(drop_after_events=7, drop_max_per_task=2),
        seed=5,
    )
    async with Emulator(settings) as emu, Bridge(bridge_config(emu, kafka, new_topic)) as bridge:
        await discovery_ready(bridge)
        emu.start_scenario(emu.settings.scenario)
        await eventually(all_finished(emu, 8), timeout_s=40, what="every emulator task to finish")
        expected = expected_events(emu)
        # Without ids, events sent while disconnected are gone: wait for the ends only.
        everyone = {t["id"] for t in emu.control.tasks()}
        done = covers(expected if server_ids else {}, everyone)
        records = await consume_until(kafka, bridge.config.topics.events, done)
        published = by_task(records)
        assert emu.stats()["drops"] > 0
        for task_id, emitted in expected.items():
            events = published[task_id]
            finished = [e for e in events if e["type"] == "task_finished"]
            assert len(finished) == 1
            wire = emu.task(task_id)
            assert wire is not None
            assert finished[0]["status"] == wire["status"]
            if server_ids:
                assert_stream_matches(emitted, events)
                ids = [e["event_id"] for e in events]
                assert len(ids) == len(set(ids))
        if not server_ids:
            sources = {e["source"] for events in published.values() for e in events}
            assert "resync" in sources


async def test_malformed_frame_goes_to_the_dlq_and_the_stream_goes_on(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    settings = EmulatorSettings(
        scenario=scenario(tasks=4, events=20, streaming_share=1.0),
        faults=FaultSettings(malformed_share=0.2),
        seed=11,
    )
    async with Emulator(settings) as emu, Bridge(bridge_config(emu, kafka, new_topic)) as bridge:
        published = await run_to_completion(emu, bridge, kafka, 4)
        for task_id, emitted in expected_events(emu).items():
            assert_stream_matches(emitted, published[task_id])
        malformed = [
            SSEDecoder().feed(e.malformed_before)[0].data
            for t in emu.control.tasks()
            for e in emu.events(t["id"])
            if e.malformed_before is not None
        ]
        assert malformed
        dead = await consume_envelopes(kafka, bridge.config.topics.dlq, len(malformed))
        assert sorted(r.required_value() for r in dead) == sorted(malformed)
        for record in dead:
            assert record.header("dlq.reason") in (b"invalid_json", b"not_an_event")
            assert record.header("dlq.task_id") == record.key


async def test_stalled_stream_is_reconnected_by_the_idle_timeout(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    settings = EmulatorSettings(
        scenario=scenario(tasks=4, events=20, streaming_share=1.0),
        faults=FaultSettings(stall_after_events=5, stall_max_per_task=1),
        seed=13,
    )
    config = {"streams": {"idle_timeout_s": 0.5, "reconnect_initial_s": 0.05}}
    async with (
        Emulator(settings) as emu,
        Bridge(bridge_config(emu, kafka, new_topic, **config)) as bridge,
    ):
        published = await run_to_completion(emu, bridge, kafka, 4)
        assert emu.stats()["stalls"] > 0
        for task_id, emitted in expected_events(emu).items():
            assert_stream_matches(emitted, published[task_id])
        reconnects = sample(
            bridge.metrics, "xpander_bridge_stream_reconnects_total", reason="idle_timeout"
        )
        assert reconnects >= 1


async def test_listing_errors_back_off_and_recover(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    settings = EmulatorSettings(
        scenario=scenario(tasks=3, events=10, streaming_share=1.0),
        faults=FaultSettings(
            http=[
                HttpFaultRule(endpoints=["list"], status=503, next_n=2),
                HttpFaultRule(endpoints=["list"], status=429, next_n=2, retry_after_s=0.2),
            ]
        ),
    )
    async with Emulator(settings) as emu, Bridge(bridge_config(emu, kafka, new_topic)) as bridge:
        published = await run_to_completion(emu, bridge, kafka, 3)
        assert emu.stats()["injected_http"], "the faults must have fired"
        for task_id, emitted in expected_events(emu).items():
            assert_stream_matches(emitted, published[task_id])
        requests = "xpander_bridge_platform_requests_total"
        assert sample(bridge.metrics, requests, endpoint="list_tasks", status_class="5xx") >= 2
        assert sample(bridge.metrics, requests, endpoint="list_tasks", status_class="4xx") >= 2


async def test_topics_are_created_with_compaction_for_the_state_topic(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator() as emu:
        config = bridge_config(emu, kafka, new_topic)
        async with Bridge(config):
            topics = [config.topics.events, config.topics.state, config.topics.dlq]
            found = await described(kafka.bootstrap_servers, topics)
            assert all(partitions > 0 for partitions, _ in found.values()), found
            assert found[config.topics.state][1] == "compact"


@PIPELINE
async def test_a_replica_whose_producer_is_fenced_stops_and_commits_nothing_more(
    kafka: KafkaService, new_topic: Callable[[str], str], pipeline: bool
) -> None:
    # Another process takes this replica's transactional.id (a restarted slot,
    # or two replicas configured with one instance id): this one is a zombie.
    settings = EmulatorSettings(scenario=scenario(tasks=6, events=40), seed=13)
    async with Emulator(settings) as emu:
        config = bridge_config(emu, kafka, new_topic, kafka={"transaction_pipeline": pipeline})
        bridge = Bridge(config)
        await bridge.start()
        try:
            await discovery_ready(bridge)
            assert bridge.sink.transactional_id is not None
            # as a replica restarted in the slot: both of its producers' ids
            successor = KafkaSink(
                config.kafka, config.topics, transactional_id=bridge.sink.transactional_id
            )
            successors = [successor, successor.partner()] if pipeline else [successor]
            for sink in successors:
                await sink.connect()  # fences the bridge's producer of that id
            try:
                emu.start_scenario(emu.settings.scenario)
                await asyncio.wait_for(bridge.wait(), 30)  # it stops by itself
            finally:
                for sink in successors:
                    await sink.aclose()
        finally:
            report = await bridge.shutdown()
        assert not report.clean, "a fenced replica does not exit 0"
        assert "delivery (failed)" in report.not_stopped
        # nothing more can be acknowledged: it does not wait out the deadline
        # for acks (it took all 15 s before)
        assert report.seconds < config.pipeline.shutdown_timeout_s / 2, report
        # Nothing it wrote after the successor took its id became visible.
        seen = await consume(kafka.bootstrap_servers, config.topics.events, max_wait=3)
        assert seen == [], seen
