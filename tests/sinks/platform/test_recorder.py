"""The platform sink (``Recorder``) against the emulator on a real port, with
injected faults: what is retried (and counted), what halts, what is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from support.waiting import eventually

from bridge.config import PlatformConfig, ReportsConfig, StreamsConfig
from bridge.emulator import Emulator
from bridge.emulator.settings import EmulatorSettings, FaultSettings, HttpFaultRule
from bridge.errors import (
    AuthError,
    NotFoundError,
    PlatformRejectedError,
    RejectedError,
)
from bridge.observability.metrics import Metrics, ReportKind
from bridge.platform.client import PlatformClient
from bridge.sinks.platform.recorder import Recorder

pytestmark = pytest.mark.timeout(30)

AGENT = "agent-emulator-1"
REPORT = orjson.dumps(
    {"id": "ext-1", "input": "job", "result": "done", "is_success": True, "duration": 1.5}
)
METRICS = orjson.dumps(
    {
        "execution_id": "exec-1",
        "source": "sdk",
        "memory_thread_id": "exec-1",
        "task": "a task",
        "status": "completed",
        "duration": 1.25,
        "ai_model": "gpt-test",
        "result": None,
    }
)
#: the emulator validates like the platform: a string duration is a 422
UNPROCESSABLE = orjson.dumps({"id": "ext-bad", "duration": "a while"})


@dataclass
class Calls:
    """What the recorder told its owner."""

    halts: list[AuthError] = field(default_factory=list)
    resumes: int = 0

    def resumed(self) -> None:
        self.resumes += 1


@dataclass
class Rig:
    emu: Emulator
    recorder: Recorder
    metrics: Metrics
    calls: Calls

    @property
    def halts(self) -> list[AuthError]:
        return self.calls.halts

    @property
    def resumes(self) -> int:
        return self.calls.resumes

    def retries(self, kind: str, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "xpander_bridge_report_retries_total", {"kind": kind, "reason": reason}
        )
        assert value is not None, "every label pair exists from the start, at 0"
        return value

    def all_retries(self) -> float:
        return sum(
            self.retries(kind, reason)
            for kind in ("report", "metrics")
            for reason in ("auth", "rate_limited", "unavailable")
        )

    @property
    def halted_gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("xpander_bridge_reports_halted")

    @property
    def report_calls(self) -> int:
        return int(self.emu.control.inbox.calls["report"])


@asynccontextmanager
async def rig(*rules: HttpFaultRule, strict_agents: bool = False) -> AsyncIterator[Rig]:
    settings = EmulatorSettings(faults=FaultSettings(http=list(rules)), strict_agents=strict_agents)
    async with Emulator(settings) as emu:
        metrics = Metrics()
        platform = PlatformConfig(
            base_url=emu.base_url,
            api_key=emu.api_key,
            organization_id=emu.organization_id,
            request_timeout_s=5,
        )
        async with PlatformClient(platform, StreamsConfig(), metrics) as client:
            calls = Calls()
            recorder = Recorder(
                client,
                metrics,
                ReportsConfig(retry_initial_s=0.01, retry_max_s=0.05),
                on_halt=calls.halts.append,
                on_resume=calls.resumed,
            )
            yield Rig(emu, recorder, metrics, calls)


def report_rule(status: int, n: int, **fields: Any) -> HttpFaultRule:
    return HttpFaultRule(endpoints=["report"], status=status, next_n=n, **fields)


async def test_a_clean_recording_returns_the_platforms_answer() -> None:
    async with rig() as r:
        answer = await r.recorder.record(ReportKind.REPORT, AGENT, REPORT)
        assert isinstance(answer, dict)
        assert answer["id"] == "ext-1"
        assert answer["status"] == "completed"
        assert r.emu.control.inbox.report_counts == {"ext-1": 1}
        assert r.all_retries() == 0
        assert r.halted_gauge == 0


async def test_5xx_is_retried_until_recorded_and_each_retry_counted() -> None:
    async with rig(report_rule(503, 3), report_rule(502, 2)) as r:
        answer = await r.recorder.record(ReportKind.REPORT, AGENT, REPORT)
        assert answer["id"] == "ext-1"
        assert r.report_calls == 6
        assert r.emu.control.inbox.report_counts == {"ext-1": 1}
        assert r.retries("report", "unavailable") == 5
        assert r.retries("report", "rate_limited") == 0
        assert r.retries("report", "auth") == 0
        assert not r.recorder.halted
        assert r.halts == []


async def test_429_waits_at_least_retry_after_then_records() -> None:
    # The back-off alone would wait at most 50 ms; Retry-After asks for 1 s.
    async with rig(report_rule(429, 1, retry_after_s=1)) as r:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await r.recorder.record(ReportKind.REPORT, AGENT, REPORT)
        waited = loop.time() - started
        assert waited >= 0.95, f"Retry-After: 1 ignored (answered after {waited:.3f}s)"
        assert r.retries("report", "rate_limited") == 1
        assert r.retries("report", "unavailable") == 0
        assert r.emu.control.inbox.report_counts == {"ext-1": 1}


async def test_metrics_retries_are_counted_under_their_own_kind() -> None:
    rules = (
        HttpFaultRule(endpoints=["metrics"], status=500, next_n=2),
        HttpFaultRule(endpoints=["metrics"], status=429, next_n=1, retry_after_s=0),
    )
    async with rig(*rules) as r:
        answer = await r.recorder.record(ReportKind.METRICS, AGENT, METRICS)
        assert answer == {"status": "recorded", "execution_id": "exec-1"}
        assert r.emu.control.inbox.metrics_counts == {"exec-1": 1}
        assert r.retries("metrics", "unavailable") == 2
        assert r.retries("metrics", "rate_limited") == 1
        assert r.retries("report", "unavailable") == 0
        assert r.report_calls == 0


async def test_401_halts_every_recording_and_resumes_by_itself_when_the_key_works() -> None:
    async with rig() as r:
        key = r.emu.api_key
        r.emu.set_api_key("rotated-elsewhere")
        recording = asyncio.create_task(r.recorder.record(ReportKind.REPORT, AGENT, REPORT))
        await eventually(lambda: r.recorder.halted, timeout_s=10, what="the halt")
        assert r.halted_gauge == 1
        await eventually(
            lambda: r.retries("report", "auth") >= 5, timeout_s=10, what="retries while halted"
        )
        assert len(r.halts) == 1, "on_halt is called once per halt, not per retry"
        assert r.halts[0].status == 401
        assert r.resumes == 0
        assert not recording.done()
        assert r.emu.reports() == []

        r.emu.set_api_key(key)
        answer = await asyncio.wait_for(recording, 10)
        assert answer["id"] == "ext-1"
        assert not r.recorder.halted
        assert r.halted_gauge == 0
        assert r.resumes == 1
        assert len(r.halts) == 1
        assert r.emu.control.inbox.report_counts == {"ext-1": 1}
        assert r.retries("report", "unavailable") == 0


async def test_403_halts_too_and_a_later_halt_is_reported_again() -> None:
    async with rig(report_rule(403, 3)) as r:
        await r.recorder.record(ReportKind.REPORT, AGENT, REPORT)
        assert r.retries("report", "auth") == 3
        assert [h.status for h in r.halts] == [403]
        assert r.resumes == 1
        assert not r.recorder.halted
        assert r.halted_gauge == 0
        # A second outage of the key is a second halt, with its own on_halt.
        r.emu.set_faults(FaultSettings(http=[report_rule(401, 2)]))
        await r.recorder.record(ReportKind.REPORT, AGENT, REPORT)
        assert [h.status for h in r.halts] == [403, 401]
        assert r.resumes == 2
        assert r.retries("report", "auth") == 5


@pytest.mark.parametrize(
    ("rules", "body", "strict", "error", "status"),
    [
        ([report_rule(400, 1)], REPORT, False, PlatformRejectedError, 400),
        ([], UNPROCESSABLE, False, PlatformRejectedError, 422),
        ([report_rule(409, 1)], REPORT, False, PlatformRejectedError, 409),
        ([], REPORT, True, NotFoundError, 404),  # an agent the platform does not know
    ],
    ids=["400", "422", "409", "404"],
)
async def test_a_refused_message_raises_at_once_without_retrying(
    rules: list[HttpFaultRule],
    body: bytes,
    strict: bool,
    error: type[RejectedError],
    status: int,
) -> None:
    agent = "agent-nobody-knows" if strict else AGENT
    async with rig(*rules, strict_agents=strict) as r:
        with pytest.raises(error) as raised:
            await r.recorder.record(ReportKind.REPORT, agent, body)
        assert raised.value.status == status
        assert r.report_calls == 1, "a refused message is not retried"
        assert r.all_retries() == 0
        assert not r.recorder.halted
        assert r.halts == []
        assert r.emu.reports() == []


async def test_a_refusal_after_a_halt_ends_the_halt() -> None:
    async with rig() as r:
        key = r.emu.api_key
        r.emu.set_api_key("rotated-elsewhere")
        recording = asyncio.create_task(r.recorder.record(ReportKind.REPORT, AGENT, UNPROCESSABLE))
        await eventually(lambda: r.recorder.halted, timeout_s=10, what="the halt")
        r.emu.set_api_key(key)  # the key works again ...
        with pytest.raises(PlatformRejectedError):  # ... and this message is refused
            await asyncio.wait_for(recording, 10)
        # The platform accepted the key (it judged the message): the halt is over.
        assert not r.recorder.halted
        assert r.halted_gauge == 0
        assert r.resumes == 1
