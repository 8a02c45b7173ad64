"""A platform source rig for the unit tests of ``bridge.sources.platform``: the
emulator on a real port, a real ``PlatformClient`` and the real ``Normalizer``,
with a ``publish`` that keeps what it is given and acknowledges it at once (as
the delivery loop does once Kafka acknowledged), so ``TaskState`` acks move.

The fixtures that build it are in ``tests/sources/platform/conftest.py``; the
types live here so that tests can name them in annotations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.config import KafkaConfig, PlatformConfig, StreamsConfig, TopicsConfig
from bridge.core.checkpoint import Checkpoint
from bridge.core.record import OutRecord, acknowledge
from bridge.core.retry import RetryPolicy
from bridge.core.task import TaskState
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings
from bridge.emulator.tasks import TaskRun
from bridge.errors import AuthError
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient
from bridge.sources.platform.context import WorkerContext
from bridge.sources.platform.pacer import FetchPacer
from bridge.transforms.normalize import Normalizer

__all__ = [
    "Published",
    "RecordingHealth",
    "Rig",
    "SetClaims",
    "fast_settings",
    "open_rig",
    "sample",
    "wait_until",
]

TOPICS = TopicsConfig()


class RecordingHealth:
    """``PlatformHealth`` that remembers what it was told."""

    def __init__(self) -> None:
        self.reachable_count = 0
        self.refusals: list[AuthError] = []
        #: (ok, detail) of each listings report
        self.listings_reports: list[tuple[bool, str]] = []

    def reachable(self) -> None:
        self.reachable_count += 1

    def refused(self, error: AuthError) -> None:
        self.refusals.append(error)

    def listings(self, ok: bool, detail: str) -> None:
        self.listings_reports.append((ok, detail))


class Published:
    """The ``publish`` of a worker: keeps every record and acknowledges it."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def __call__(self, records: list[OutRecord]) -> None:
        self.records.extend(records)
        for record in records:
            acknowledge(record)

    def envelopes(self, task_id: str | None = None) -> list[dict[str, Any]]:
        """The envelopes on the events topic (the state topic repeats lifecycle ones)."""
        out: list[dict[str, Any]] = []
        for record in self.records:
            if record.topic != TOPICS.events or record.value is None:
                continue
            envelope: dict[str, Any] = orjson.loads(record.value)
            if task_id is None or envelope["task_id"] == task_id:
                out.append(envelope)
        return out

    def types(self, task_id: str | None = None) -> list[str]:
        return [e["type"] for e in self.envelopes(task_id)]


@dataclass
class SetClaims:
    """``Claims`` by hand: the tasks in ``owned`` (all when ``None``), with
    the given checkpoints."""

    owned: set[str] | None = None
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    catch_up_window_s: float | None = None
    asked: list[str] = field(default_factory=list)

    def owns(self, task_id: str) -> bool:
        self.asked.append(task_id)
        return self.owned is None or task_id in self.owned

    def checkpoint(self, task_id: str) -> Checkpoint | None:
        return self.checkpoints.get(task_id)


@dataclass
class Rig:
    emulator: Emulator
    client: PlatformClient
    metrics: Metrics
    normalizer: Normalizer
    published: Published
    health: RecordingHealth
    context: WorkerContext

    def run_of(self, task_id: str) -> TaskRun:
        return self.emulator.engine.tasks[task_id]

    def state_for(self, task: dict[str, Any]) -> TaskState:
        """A fresh ``TaskState`` for an emulator task (as the supervisor makes one)."""
        return TaskState(task["id"], task.get("agent_id"), task.get("organization_id"))

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    def emitted(self, task_id: str) -> list[tuple[str, str | None, Any]]:
        """(type, SSE id, data) of every event the emulator emitted for a task."""
        return [(e.type, e.id, e.payload["data"]) for e in self.emulator.events(task_id)]

    def streamed(self, task_id: str) -> list[tuple[str, str | None, Any]]:
        """The same, of the envelopes published for the task."""
        return [(e["type"], e["sse_id"], e["data"]) for e in self.published.envelopes(task_id)]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample through the registry's public API; 0 when it was never set."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def fast_settings(**overrides: Any) -> EmulatorSettings:
    """Fast tasks: twelve events, 2 ms apart."""
    settings = EmulatorSettings(**overrides)
    settings.tasks.event_interval_s = 0.002
    settings.tasks.events_per_task = 12
    return settings


@asynccontextmanager
async def open_rig(
    settings: EmulatorSettings | None = None,
    *,
    idle_timeout_s: float = 10.0,
    reconnect: RetryPolicy | None = None,
    resync_grace_s: float = 2.0,
    poll_interval_s: float = 0.05,
    max_concurrent: int = 100,
    quiet_check_s: float = 120.0,
    max_frame_bytes: int = 8 * 1024 * 1024,
    activity_fetches: int = 4,
) -> AsyncIterator[Rig]:
    """An emulator, a client bound to it and a ``WorkerContext`` around both."""
    metrics = Metrics()
    async with Emulator(settings or fast_settings()) as emulator:
        platform = PlatformConfig(
            base_url=emulator.base_url,
            api_key=emulator.api_key,
            organization_id=emulator.organization_id,
            request_timeout_s=10.0,
        )
        streams = StreamsConfig(idle_timeout_s=idle_timeout_s)
        async with PlatformClient(platform, streams, metrics) as client:
            normalizer = Normalizer(TOPICS, KafkaConfig(), metrics)
            published = Published()
            health = RecordingHealth()
            context = WorkerContext(
                client=client,
                transform=normalizer,
                publish=published,
                metrics=metrics,
                health=health,
                reconnect=reconnect or RetryPolicy(0.01, 0.05),
                resync_grace_s=resync_grace_s,
                poll_interval_s=poll_interval_s,
                admission=asyncio.Semaphore(max_concurrent),
                quiet_check_s=quiet_check_s,
                max_frame_bytes=max_frame_bytes,
                activity_pacer=FetchPacer(activity_fetches, metrics.activity_fetches_waiting),
            )
            yield Rig(emulator, client, metrics, normalizer, published, health, context)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, within_s: float = 5.0
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
