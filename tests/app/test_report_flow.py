"""One report or metrics message through ``ReportFlow``: parsed, recorded on the
emulator (a real port), mirrored as an envelope or dead-lettered; Kafka is a
publish that collects the records and acknowledges them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from support.publishing import RecordingPublish
from support.waiting import eventually

from bridge.app.report_flow import ReportFlow
from bridge.config import BridgeConfig
from bridge.core.message import InMessage
from bridge.core.record import OutRecord
from bridge.emulator import Emulator
from bridge.emulator.settings import EmulatorSettings, FaultSettings, HttpFaultRule
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient
from bridge.sinks.kafka.dead_letters import DeadLetterSink
from bridge.sinks.platform.recorder import Recorder
from bridge.transforms.normalize import Normalizer
from bridge.transforms.reports import derived_report_id

pytestmark = pytest.mark.timeout(30)

AGENT = "agent-emulator-1"
REPORTS, METRICS, EVENTS, STATE, DLQ = "reports", "metrics", "events", "state", "dlq"


@dataclass
class Rig:
    emu: Emulator
    flow: ReportFlow
    publish: RecordingPublish
    metrics: Metrics

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def outcome(self, outcome: str, kind: str = "report") -> float:
        return self.count("xpander_bridge_reports_recorded_total", kind=kind, outcome=outcome)

    @property
    def report_calls(self) -> int:
        return int(self.emu.control.inbox.calls["report"])


@asynccontextmanager
async def rig(*rules: HttpFaultRule) -> AsyncIterator[Rig]:
    async with Emulator(EmulatorSettings(faults=FaultSettings(http=list(rules)))) as emu:
        config = BridgeConfig.model_validate(
            {
                "platform": {
                    "base_url": emu.base_url,
                    "api_key": emu.api_key,
                    "organization_id": emu.organization_id,
                    "request_timeout_s": 5,
                },
                "topics": {"events": EVENTS, "state": STATE, "dlq": DLQ},
                "reports": {
                    "reports_topic": REPORTS,
                    "metrics_topic": METRICS,
                    "retry_initial_s": 0.01,
                    "retry_max_s": 0.05,
                },
            }
        )
        metrics = Metrics()
        publish = RecordingPublish()
        async with PlatformClient(config.platform, config.streams, metrics) as client:
            flow = ReportFlow(
                config,
                Recorder(client, metrics, config.reports),
                Normalizer(config.topics, config.kafka, metrics),
                DeadLetterSink(config.topics.dlq, publish),
                publish,
                metrics,
            )
            yield Rig(emu, flow, publish, metrics)


def message(
    value: Any,
    *,
    topic: str = REPORTS,
    key: bytes | None = None,
    offset: int = 0,
    partition: int = 0,
    headers: list[tuple[str, bytes]] | None = None,
) -> InMessage:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return InMessage(topic, partition, offset, key, raw, headers or [])


def report(task_id: str | None = "ext-1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": AGENT,
        "input": "the job",
        "result": "the answer",
        "is_success": True,
        "duration": 2.5,
        **fields,
    }
    if task_id is not None:
        body["id"] = task_id
    return body


def envelope(record: OutRecord) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(record.value or b"null")
    return value


def header(record: OutRecord, name: str) -> bytes | None:
    found = [v for k, v in record.headers if k == name]
    return found[-1] if found else None


async def test_a_valid_report_is_recorded_once_and_mirrored_as_task_finished() -> None:
    async with rig() as r:
        await r.flow(message(report("ext-1"), key=b"whatever"))
        assert r.emu.control.inbox.report_counts == {"ext-1": 1}
        (received,) = r.emu.reports()
        assert received.agent_id == AGENT
        assert received.body["result"] == "the answer"
        assert "agent_id" not in received.body, "the agent is in the path, not the body"

        (mirror,) = r.publish.on(EVENTS)
        got = envelope(mirror)
        assert got["type"] == "task_finished"
        assert got["source"] == "report"
        assert got["task_id"] == "ext-1"
        assert got["agent_id"] == AGENT
        assert got["organization_id"] == r.emu.organization_id
        assert got["status"] == "completed"
        assert mirror.key == b"ext-1", "keyed by task id, not by the message key"
        assert header(mirror, "ce_type") == b"ai.xpander.task.task_finished"
        assert [envelope(s)["event_id"] for s in r.publish.on(STATE)] == [got["event_id"]]
        assert r.publish.on(DLQ) == []
        assert r.count("xpander_bridge_reports_consumed_total", kind="report") == 1
        assert r.outcome("recorded") == 1
        assert r.outcome("dead_lettered") == 0
        assert r.count("xpander_bridge_report_record_seconds_count") == 1


async def test_a_failed_run_is_mirrored_with_status_failed() -> None:
    async with rig() as r:
        await r.flow(message(report("ext-2", is_success=False)))
        (mirror,) = r.publish.on(EVENTS)
        assert envelope(mirror)["status"] == "failed"


async def test_the_message_is_done_only_once_its_mirror_is_acknowledged() -> None:
    async with rig() as r:
        r.publish.hold = True
        handling = asyncio.create_task(r.flow(message(report("ext-3"))))
        await eventually(
            lambda: bool(r.publish.on(EVENTS)), timeout_s=10, what="the mirror handed over"
        )
        for _ in range(20):
            await asyncio.sleep(0)
        assert not handling.done(), "done before Kafka had the mirror: a commit could lose it"
        r.publish.ack()
        await asyncio.wait_for(handling, 5)
        assert r.outcome("recorded") == 1


@pytest.mark.parametrize(
    ("value", "key", "why"),
    [
        (b"{not json", None, b"not JSON"),
        (orjson.dumps({**report(), "is_sucess": True}), None, b"is_sucess"),
        (orjson.dumps({"result": "no agent anywhere"}), None, b"agent_id"),
        (orjson.dumps([report()]), None, b"not a JSON object"),
        (None, b"agent-emulator-1", b"tombstone"),
    ],
    ids=["not-json", "unknown-field", "no-agent", "array", "tombstone"],
)
async def test_an_invalid_message_goes_to_the_dlq_and_never_to_the_platform(
    value: bytes | None, key: bytes | None, why: bytes
) -> None:
    async with rig() as r:
        original = message(value, key=key, offset=41, headers=[("trace", b"t-1")])
        await r.flow(original)
        assert r.report_calls == 0
        assert r.publish.on(EVENTS) == []
        (dead,) = r.publish.on(DLQ)
        assert dead.value == (value or b"")
        assert dead.key == key
        assert header(dead, "dlq.reason") == b"invalid_report"
        assert why in (header(dead, "dlq.error") or b"")
        assert header(dead, "dlq.original_topic") == REPORTS.encode()
        assert header(dead, "dlq.original_offset") == b"41"
        assert header(dead, "dlq.status") is None
        assert header(dead, "trace") == b"t-1"
        assert r.outcome("dead_lettered") == 1
        assert r.outcome("recorded") == 0


@pytest.mark.parametrize("status", [400, 422])
async def test_a_platform_refusal_goes_to_the_dlq_with_its_status(status: int) -> None:
    rule = HttpFaultRule(endpoints=["report"], status=status, next_n=1)
    async with rig(rule) as r:
        value = orjson.dumps(report("ext-4"))
        await r.flow(message(value, key=b"k"))
        assert r.report_calls == 1, "refused once, not retried"
        assert r.emu.reports() == []
        assert r.publish.on(EVENTS) == [], "nothing recorded: nothing mirrored"
        (dead,) = r.publish.on(DLQ)
        assert dead.value == value
        assert dead.key == b"k"
        assert header(dead, "dlq.reason") == b"platform_rejected"
        assert header(dead, "dlq.status") == str(status).encode()
        assert r.outcome("dead_lettered") == 1


async def test_a_redelivered_report_is_a_duplicate() -> None:
    async with rig() as r:
        first = message(report("ext-5"), offset=7)
        await r.flow(first)
        await r.flow(first)  # the same message again (a rebalance before the commit)
        await r.flow(message(report("ext-5"), offset=8))  # the same task id, sent twice
        assert r.emu.control.inbox.report_counts == {"ext-5": 1}
        assert r.report_calls == 1
        assert len(r.publish.on(EVENTS)) == 1
        assert r.outcome("recorded") == 1
        assert r.outcome("duplicate") == 2
        assert r.count("xpander_bridge_reports_consumed_total", kind="report") == 3


async def test_a_report_without_id_is_deduplicated_by_its_kafka_coordinates() -> None:
    async with rig() as r:
        no_id = report(None)
        await r.flow(message(no_id, offset=3, partition=1))
        await r.flow(message(no_id, offset=3, partition=1))  # redelivered
        await r.flow(message(no_id, offset=4, partition=1))  # another message: another task
        assert dict(r.emu.control.inbox.report_counts) == {
            derived_report_id(REPORTS, 1, 3): 1,
            derived_report_id(REPORTS, 1, 4): 1,
        }
        assert r.outcome("recorded") == 2
        assert r.outcome("duplicate") == 1


async def test_a_metrics_message_is_recorded_and_not_mirrored() -> None:
    body = {
        "agent_id": AGENT,
        "execution_id": "exec-9",
        "source": "sdk",
        "memory_thread_id": "exec-9",
        "task": "t",
        "status": "completed",
        "duration": 1.0,
        "ai_model": "gpt-test",
    }
    async with rig() as r:
        await r.flow(message(body, topic=METRICS))
        await r.flow(message(body, topic=METRICS, offset=1))
        assert r.emu.control.inbox.metrics_counts == {"exec-9": 1}
        assert r.report_calls == 0
        assert r.publish.records == []
        assert r.outcome("recorded", kind="metrics") == 1
        assert r.outcome("duplicate", kind="metrics") == 1
        assert r.count("xpander_bridge_reports_consumed_total", kind="metrics") == 2
