"""The bridge against a platform that misbehaves the way real servers and real
configs do, all at once: an agent id it answers 404, one whose listing never
answers, frames nested deeper than the fast encoder goes, integers past 64
bits, a data line far over the frame limit, frames that are not JSON or not
events, an absurd ``retry:``. Every other event still arrives, in order, with
no ``sequence`` reused, and the bad input is in the DLQ or a metric."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from support.e2e import all_finished, bridge_config, by_task, consume_until, covers
from support.kafka import KafkaService, consume
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, HttpFaultRule, TaskProfile

GOOD = "agent-emulator-1"
PROFILE = TaskProfile(
    events_per_task=30, event_interval_s=0.03, interval_jitter=0.0, sub_task_share=0.0
)
DEEP: Any = "bottom"
for _level in range(300):
    DEEP = [DEEP]
BIG = 123456789012345678901234567890


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


@pytest.mark.timeout(120)
async def test_a_hostile_platform_loses_nothing_else(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    settings = EmulatorSettings(agent_ids=[GOOD], tasks=PROFILE, seed=3)
    async with Emulator(settings) as emu:
        emu.set_faults(
            http=[
                HttpFaultRule(endpoints=["list_tasks"], ids=["a-typo"], status=404, share=1.0),
                HttpFaultRule(endpoints=["list_tasks"], ids=["a-hangs"], hang=True, share=1.0),
            ]
        )
        config = bridge_config(
            emu,
            kafka,
            new_topic,
            discovery={"agent_ids": ["a-typo", "a-hangs", GOOD], "interval_s": 0.2},
            streams={"max_frame_bytes": 1_000_000},
            platform={"request_timeout_s": 3},
            coordination={"enabled": False},
        )
        async with Bridge(config) as bridge:
            await eventually(
                lambda: (
                    bridge.discovery is not None
                    and any(x.successes for x in bridge.discovery._listings)
                ),
                timeout_s=15,
                what="the good listing",
            )
            tasks = [emu.create_task(agent_id=GOOD, outcome="completed")["id"] for _ in range(5)]
            deep, big, huge, junk, _plain = tasks
            await eventually(
                lambda: all(emu.engine.tasks[t].subscribers for t in tasks),
                timeout_s=15,
                what="every stream open",
            )
            emu.inject_raw(
                deep, frame(json.dumps({"type": "tool_call_result", "data": DEEP}).encode())
            )
            emu.inject_raw(big, frame(b'{"type":"tool_call_result","data":{"n":%d}}' % BIG))
            emu.control.inject_huge_line(huge, 20_000_000)
            emu.inject_raw(junk, frame(b"{not json") + frame(b'{"no":"type"}'))
            emu.inject_raw(junk, b"retry: " + b"9" * 300 + b"\n\n")
            await eventually(all_finished(emu, 5), timeout_s=60, what="every task to finish")
            expected = {t: [(e.type, e.json) for e in emu.events(t)] for t in tasks}
            records = await consume_until(
                kafka, config.topics.events, covers(expected, set(tasks)), 40
            )
            metrics = bridge.metrics.registry
            assert (
                metrics.get_sample_value("xpander_bridge_listing_failing", {"owner": "a-typo"}) == 1
            )
            assert metrics.get_sample_value("xpander_bridge_listing_failing", {"owner": GOOD}) == 0

    published = by_task(records)
    for task_id in tasks:
        envelopes = published[task_id]
        sequences = [e["sequence"] for e in envelopes]
        assert sequences == sorted(set(sequences)), f"{task_id}: sequence reused or out of order"
        streamed = [(e["type"], canonical(e["data"])) for e in envelopes if e["source"] == "sse"]
        emitted = [
            (kind, canonical(orjson.loads(data).get("data"))) for kind, data in expected[task_id]
        ]
        assert [s for s in streamed if s in emitted] == emitted, f"{task_id}: events missing"
    raw = {r.value for r in records if r.value}
    assert any(b'"n":%d' % BIG in value for value in raw), "big integer not carried exactly"
    deep_data = [
        json.loads(v)["data"] for v in raw if b"bottom" in v and b'"tool_call_result"' in v
    ]
    assert DEEP in deep_data
    dead = await consume(kafka.bootstrap_servers, [config.topics.dlq], count=3, max_wait=20)
    reasons: dict[str, list[dict[str, bytes]]] = defaultdict(list)
    for record in dead:
        headers = dict(record.headers)
        reasons[headers["dlq.reason"].decode()].append(headers)
    assert {"frame_too_large", "invalid_json", "not_an_event"} <= set(reasons)
    (too_large,) = reasons["frame_too_large"]
    assert too_large["dlq.task_id"] == huge.encode()
    assert int(too_large["dlq.bytes"]) >= 20_000_000
