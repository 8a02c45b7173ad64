"""End-to-end helpers: the emulator on a real port, a real broker, the bridge."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.emulator.server import Emulator
from support.kafka import ConsumedRecord, KafkaOutage, KafkaService, consume
from support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
Output = int | IO[Any]


async def run_bridge(
    env: dict[str, str],
    *,
    stdout: Output = asyncio.subprocess.PIPE,
    stderr: Output = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """``python -m bridge run`` in its own process, configured by ``env`` alone
    (as a container runs it)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", env=env, cwd=ROOT, stdout=stdout, stderr=stderr
    )


def bridge_config(
    emu: Emulator,
    broker: KafkaService | KafkaOutage,
    new_topic: Callable[[str], str],
    **sections: Any,
) -> BridgeConfig:
    """A config pointing at the emulator and the test broker, with unique topics."""
    data: dict[str, Any] = {
        "platform": {
            "base_url": emu.base_url,
            "api_key": emu.api_key,
            "organization_id": emu.organization_id,
        },
        "discovery": {
            "agent_ids": list(emu.settings.agent_ids),
            "interval_s": 0.2,
            "poll_interval_s": 0.1,
            "max_listing_requests_per_s": 1000,  # the 0.2 s interval, not the budget's
        },
        "streams": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "idle_timeout_s": 5},
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers.split(","),
            "linger_ms": 2,
        },
        "topics": {
            "events": new_topic("events"),
            "state": new_topic("state"),
            "dlq": new_topic("dlq"),
            "activity": new_topic("activity"),
            "partitions": 3,
        },
        "reports": {"enabled": False},
        "coordination": {
            "tasks_topic": new_topic("tasks"),
            "checkpoints_topic": new_topic("checkpoints"),
            "group_id": new_topic("owners"),
            "partitions": 6,
            **getattr(
                broker, "group_settings", {"session_timeout_ms": 2000, "heartbeat_interval_ms": 200}
            ),
        },
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "pipeline": {"shutdown_timeout_s": 15},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return BridgeConfig.model_validate(data)


async def discovery_ready(bridge: Bridge) -> None:
    """Tasks that ended before the bridge's first listing are history, not news:
    start scenarios only after it."""
    await eventually(
        lambda: bridge.discovery is not None and bridge.discovery.rounds >= 1,
        timeout_s=10,
        what="first listing",
    )


def all_finished(emu: Emulator, count: int) -> Callable[[], bool]:
    def check() -> bool:
        tasks = emu.control.tasks()
        return len(tasks) >= count and all(t["finished"] for t in tasks)

    return check


async def consume_envelopes(
    kafka: KafkaService, topic: str, count: int, max_wait: float = 20.0
) -> list[ConsumedRecord]:
    return await consume(kafka.bootstrap_servers, [topic], count=count, max_wait=max_wait)


def by_task(records: list[ConsumedRecord]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        envelope = orjson.loads(record.required_value())
        grouped[envelope["task_id"]].append(envelope)
    return grouped


def expected_events(emu: Emulator) -> dict[str, list[tuple[str, bytes]]]:
    """Per streaming task, the (type, JSON) of every event the emulator emitted."""
    return {
        t["id"]: [(e.type, e.json) for e in emu.events(t["id"])]
        for t in emu.control.tasks()
        if t["events_streaming"]
    }


async def consume_until(
    kafka: KafkaService | KafkaOutage,
    topic: str,
    done: Callable[[list[ConsumedRecord]], bool],
    max_wait: float = 30.0,
    *,
    read_committed: bool = True,
) -> list[ConsumedRecord]:
    """Read the topic from the start until ``done(records)``; fail after ``max_wait``."""
    records = await consume(
        kafka.bootstrap_servers,
        [topic],
        max_wait=max_wait,
        until=done,
        read_committed=read_committed,
    )
    if not done(records):
        grouped = by_task(records)
        summary = {
            t[:8]: [(e["type"], e["source"], e["sse_id"]) for e in es] for t, es in grouped.items()
        }
        raise AssertionError(f"{topic}: condition not met with {len(records)} records: {summary}")
    return records


def finished_count(records: list[ConsumedRecord]) -> int:
    return sum(1 for r in records if b'"type":"task_finished"' in (r.value or b""))


def covers(
    expected: dict[str, list[tuple[str, bytes]]], must_finish: set[str]
) -> Callable[[list[ConsumedRecord]], bool]:
    """Done when each streaming task has as many stream envelopes as it emitted
    events (``connected`` handshakes aside) and every task in ``must_finish``
    has its ``task_finished``.

    Incremental: each call reads only the records added since the last one
    (the consumer calls it after every batch; re-reading all was quadratic,
    minutes at a soak's 250,000 records)."""
    counts: dict[str, int] = defaultdict(int)
    finished_ids: set[str] = set()
    short = {task for task, events in expected.items() if events}
    read = 0
    seen: list[ConsumedRecord] | None = None

    def done(records: list[ConsumedRecord]) -> bool:
        nonlocal read, seen
        if records is not seen or len(records) < read:  # a new read from the start
            counts.clear()
            finished_ids.clear()
            short.update(task for task, events in expected.items() if events)
            read, seen = 0, records
        for record in records[read:]:
            envelope = orjson.loads(record.value or b"{}")
            task = envelope.get("task_id")
            if envelope.get("type") == "task_finished":
                finished_ids.add(task)
            if envelope.get("source") == "sse" and envelope.get("type") != "connected":
                counts[task] += 1
                if task in short and counts[task] >= len(expected[task]):
                    short.discard(task)
        read = len(records)
        return not short and must_finish <= finished_ids

    return done


def config_env(config: BridgeConfig, **overrides: str) -> dict[str, str]:
    """The whole of ``config`` as environment variables, for a bridge run as a
    subprocess exactly as Kubernetes runs it (no file): the inherited
    environment without any XPANDER/KAFKA variable, then every field."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPANDER", "KAFKA"))}
    data = config.model_dump(mode="json")
    for section, fields in data.items():
        for field, value in fields.items():
            if value is None or (section, field) == ("platform", "api_key"):
                continue
            if isinstance(value, list | dict):
                text = orjson.dumps(value).decode()
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            env[f"XPANDER_BRIDGE_{section.upper()}__{field.upper()}"] = text
    if config.platform.api_key is not None:
        env["XPANDER_API_KEY"] = config.platform.api_key.get_secret_value()
    env.update(overrides)
    return env
