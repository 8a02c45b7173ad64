"""The bridge against failures: the broker away for a while, SIGTERM mid-run,
a broker without idempotence."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import httpx
import orjson
import pytest
from support.e2e import (
    all_finished,
    bridge_config,
    by_task,
    config_env,
    consume_until,
    covers,
    discovery_ready,
    expected_events,
    run_bridge,
)
from support.kafka import KafkaOutage, KafkaService, consume
from support.metrics import sample
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile


def scenario(tasks: int, events: int, interval: float) -> ScenarioSettings:
    return ScenarioSettings(
        task_count=tasks,
        arrival_interval_s=0.05,
        streaming_share=1.0,
        profile=TaskProfile(events_per_task=events, event_interval_s=interval, sub_task_share=0),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pipeline", [False, True], ids=["one-producer", "pipelined"])
async def test_broker_down_for_a_while_loses_nothing(
    kafka_outage: KafkaOutage, new_topic: Callable[[str], str], pipeline: bool
) -> None:
    # (pipelined: both producers' transactions fail and are redone in order)
    settings = EmulatorSettings(scenario=scenario(tasks=10, events=60, interval=0.03), seed=7)
    async with Emulator(settings) as emu:
        config = bridge_config(
            emu,
            kafka_outage,
            new_topic,
            kafka={"request_timeout_ms": 2000, "transaction_pipeline": pipeline},
        )
        async with Bridge(config) as bridge:
            await discovery_ready(bridge)
            emu.start_scenario(emu.settings.scenario)
            await eventually(
                lambda: bridge.records_enqueued > 50, timeout_s=20, what="events flowing"
            )
            delivery = bridge.delivery
            assert delivery is not None

            def failed_sends() -> float:
                errors = "xpander_bridge_publish_errors_total"
                return sample(bridge.metrics, errors, reason="timeout") + sample(
                    bridge.metrics, errors, reason="unavailable"
                )

            failed_before = failed_sends()
            kafka_outage.proxy.pause()
            assert bridge.http is not None
            readyz = f"http://127.0.0.1:{bridge.http.port}/readyz"
            async with httpx.AsyncClient() as client:

                async def not_ready() -> bool:
                    return (await client.get(readyz)).status_code == 503

                await eventually(
                    not_ready, timeout_s=20, what="readiness to drop while Kafka is down"
                )
                # Down long enough for sends to fail and their retries to fail too:
                # librdkafka fails a record after message.timeout.ms (with
                # transactions, the transaction timeout); the transaction is then
                # aborted and redone, and each failed try is counted, so two
                # failures mean a retry while the broker was down.
                await eventually(
                    lambda: failed_sends() - failed_before >= 2,
                    timeout_s=40,
                    what="a send retried while Kafka is down to fail again",
                )
                assert delivery.in_flight > 0, "nothing acknowledged while Kafka is down"
                kafka_outage.proxy.resume()

                async def ready() -> bool:
                    return (await client.get(readyz)).status_code == 200

                await eventually(ready, timeout_s=30, what="readiness to come back")
            await eventually(all_finished(emu, 10), timeout_s=40, what="every task to finish")
            expected = expected_events(emu)
            records = await consume_until(
                kafka_outage, config.topics.events, covers(expected, set(expected)), 40
            )
            published = by_task(records)
            for task_id, emitted in expected.items():
                stream = [e for e in published[task_id] if e["type"] != "connected"]
                # At least once: every emitted event, none missing; duplicates
                # (retried sends) carry the same event_id and sequence. Without
                # an idempotent producer (this broker has none) an outage longer
                # than the batch TTL can reorder a task's events: `sequence`
                # restores the order, which is what consumers are told to use.
                unique = {e["sequence"]: e for e in stream}
                in_order = [unique[s]["sse_id"] for s in sorted(unique)]
                assert in_order == [e.id for e in emu.events(task_id)]
                assert len(in_order) == len(emitted)
                assert len({e["event_id"] for e in stream}) == len(unique)
            assert failed_sends() > 0


@pytest.mark.timeout(90)
async def test_sigterm_mid_run_exits_0_with_everything_read_in_kafka(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    settings = EmulatorSettings(scenario=scenario(tasks=30, events=200, interval=0.01), seed=9)
    async with Emulator(settings) as emu:
        config = bridge_config(emu, kafka, new_topic)
        env = config_env(
            config,
            XPANDER_BRIDGE_REPORTS__ENABLED="false",
            XPANDER_BRIDGE_HTTP__ENABLED="false",
            XPANDER_BRIDGE_LOGGING__FORMAT="json",
        )
        process = await run_bridge(env)
        try:
            await eventually(
                lambda: emu.stats()["open_streams"] >= 5, timeout_s=30, what="streams to open"
            )
            emu.start_scenario(emu.settings.scenario)
            await eventually(
                lambda: emu.stats()["events_sent"] > 500, timeout_s=30, what="events flowing"
            )
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
        assert process.returncode == 0, stderr.decode()[-3000:]
        lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
        (stopped,) = [line for line in lines if line["message"] == "bridge stopped"]
        assert stopped["undelivered_records"] == 0
        enqueued = stopped["records_enqueued"]
        assert enqueued > 0
        assert stopped["records_delivered"] == enqueued
        topics = [
            config.topics.events,
            config.topics.state,
            config.topics.dlq,
            config.coordination.checkpoints_topic,
        ]
        records = await consume(kafka.bootstrap_servers, topics, count=enqueued, max_wait=20)
        assert len(records) == enqueued
        # No gap: each task's stream envelopes are a prefix of what it emitted.
        for task_id, events in by_task([r for r in records if r.topic == topics[0]]).items():
            ids = [e["sse_id"] for e in events if e["type"] != "connected"]
            assert ids == [e.id for e in emu.events(task_id)][: len(ids)]
