"""Shared by the interop tests: one bridge run's output, the tools, the
documentation's examples."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.e2e import all_finished, bridge_config, consume_until, covers, discovery_ready
from support.e2e import expected_events as emitted_events
from support.kafka import ConsumedRecord, KafkaService, consume, topic_name
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile

ROOT = Path(__file__).resolve().parents[2]
TASKS = 6


@dataclass(frozen=True)
class Published:
    """What one bridge run wrote, as our own (read_committed) consumer read it
    after the bridge stopped."""

    kafka: KafkaService
    events_topic: str
    state_topic: str
    events: list[ConsumedRecord]
    state: list[ConsumedRecord]
    activity_topic: str
    #: every activity record (one per ended task here: the threads are small)
    activity: list[ConsumedRecord]
    #: every emulator task (sub-tasks included) -> its final status
    statuses: dict[str, str]


def _run(coroutine: Coroutine[Any, Any, Published]) -> Published:
    # In a thread of its own: the test session's event loops are left alone.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _publish(kafka: KafkaService) -> Published:
    settings = EmulatorSettings(
        scenario=ScenarioSettings(
            task_count=TASKS,
            arrival_interval_s=0.01,
            streaming_share=0.75,
            profile=TaskProfile(events_per_task=8, event_interval_s=0.003, events_jitter=0.3),
        ),
        seed=11,
    )
    async with Emulator(settings) as emu:
        config = bridge_config(emu, kafka, lambda suffix: topic_name(f"interop-{suffix}"))
        async with Bridge(config) as bridge:
            await discovery_ready(bridge)
            emu.start_scenario(emu.settings.scenario)
            await eventually(all_finished(emu, TASKS), timeout_s=40, what="every task to finish")
            everyone = {t["id"] for t in emu.control.tasks()}
            await consume_until(kafka, config.topics.events, covers(emitted_events(emu), everyone))
            await consume_until(kafka, config.topics.activity, _threads_of(everyone))
        statuses = {t["id"]: t["status"] for t in emu.control.tasks()}
    # The bridge has stopped: what is there now is all there will be.
    events, state, activity = await asyncio.gather(
        consume(kafka.bootstrap_servers, config.topics.events, max_wait=3.0),
        consume(kafka.bootstrap_servers, config.topics.state, max_wait=3.0),
        consume(kafka.bootstrap_servers, config.topics.activity, max_wait=3.0),
    )
    return Published(
        kafka=kafka,
        events_topic=config.topics.events,
        state_topic=config.topics.state,
        events=events,
        state=state,
        activity_topic=config.topics.activity,
        activity=activity,
        statuses=statuses,
    )


def _threads_of(tasks: set[str]) -> Callable[[list[ConsumedRecord]], bool]:
    """Done when every task in ``tasks`` has its activity record."""
    return lambda records: {(r.key or b"").decode() for r in records} >= tasks


def publish(kafka: KafkaService) -> Published:
    """Run the emulator's scenario through the bridge to ``kafka``, stop the
    bridge (every transaction closed), and read both topics."""
    result = _run(_publish(kafka))
    assert result.events, "the bridge published nothing"
    assert set(result.statuses) >= {(r.key or b"").decode() for r in result.events}, (
        "events of tasks the emulator does not know"
    )
    return result


#: kcat 1.7.1 (Debian 12, librdkafka 2.0.2) cannot parse tansu 0.6.0's
#: ApiVersions v3 answer ("ApiVersionRequest failed: Local: Read underflow"):
#: the legacy protocol works, with absolute offsets (tansu's answer to the
#: legacy ListOffsets of ``-o beginning`` does not parse either). The legacy
#: Fetch has no isolation level: kcat reads uncommitted (docs/CONSUMING.md).
KCAT_ON_TANSU = ("-X", "api.version.request=false", "-X", "broker.version.fallback=0.9.0")


def kcat_args(kafka: KafkaService) -> tuple[list[str], str]:
    """Protocol settings for kcat on this broker, and the start offset to give ``-o``."""
    if kafka.broker == "tansu":
        return list(KCAT_ON_TANSU), "0"
    return ["-X", "isolation.level=read_committed"], "beginning"


# -- the documentation's examples -------------------------------------------------------

CONSUMING = ROOT / "docs" / "CONSUMING.md"
_EXAMPLE = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```(\w+)\n(.*?)\n```", re.DOTALL)
_FENCE = re.compile(r"^```(\w+)$", re.MULTILINE)


@dataclass(frozen=True)
class Example:
    name: str
    language: str
    code: str


def examples() -> dict[str, Example]:
    """Every block of docs/CONSUMING.md marked ``<!-- example: name -->``."""
    text = CONSUMING.read_text()
    found: dict[str, Example] = {}
    for match in _EXAMPLE.finditer(text):
        name, language, code = match.groups()
        assert name not in found, f"two examples named {name} in {CONSUMING.name}"
        found[name] = Example(name, language, code + "\n")
    return found


def python_blocks() -> int:
    """How many Python blocks the page has, marked or not."""
    return sum(1 for m in _FENCE.finditer(CONSUMING.read_text()) if m[1] == "python")
