"""The alert rules in a real Prometheus, scraping a real bridge:

- the emulator makes an agent's tasks fail, the bridge counts them, Prometheus
  scrapes ``/metrics`` and evaluates the project's rules, and
  ``XpanderBridgeTasksFailing`` fires for that agent;
- a task of another agent pauses (waiting for a human) past that agent's
  threshold and ``XpanderBridgeTaskPausedTooLong`` fires; it resolves when the
  task resumes.

This proves what the promtool unit tests cannot: that the metric the bridge
actually exports, scraped the way Prometheus scrapes it, drives the rule. It
also shows why the counters start at 0: the first scrape happens before any
task finishes, so ``rate()`` and ``increase()`` see every failure.

The rules are the chart's PrometheusRule as ``helm template`` renders it (with
the chart's defaults it is the plain rules file, ``test_alerts.py`` checks
that), so the paused-task threshold is set the way an operator sets it: a
per-agent ``prometheusRule.pausedTask.agentThresholdMinutes`` for the test's
agent, the shipped 15-minute default for every other.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.e2e import bridge_config, discovery_ready
from support.kafka import KafkaService
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, ScenarioSettings, TaskProfile
from deploy.helpers import RULES, only, render, require_tool

AGENT = "agent-flaky"
ALERT = "XpanderBridgeTasksFailing"
#: The rule's ``for:`` in the test: the real 5 minutes would make this test
#: last 5 minutes. Only ``for`` changes; the expression (and its 15-minute
#: window, which works as it is on a few seconds of data) stays the project's.
TEST_FOR = "2s"

PAUSED_AGENT = "agent-hitl"
PAUSED_ALERT = "XpanderBridgeTaskPausedTooLong"
#: The paused-task threshold of PAUSED_AGENT in the test, in minutes (3 s), set
#: through the chart's values; every other agent keeps the shipped default.
PAUSED_THRESHOLD_MIN = 0.05
SHIPPED_PAUSED_THRESHOLD_MIN = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chart_rules(directory: Path) -> dict[str, Any]:
    """The chart's PrometheusRule spec (a rules file's content) with the test
    agent's paused-task threshold in the values, as an operator would set it."""
    values = directory / "values.yaml"
    paused = {"agentThresholdMinutes": {PAUSED_AGENT: PAUSED_THRESHOLD_MIN}}
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, "pausedTask": paused}}))
    spec: dict[str, Any] = only(render(require_tool("helm"), [values]), "PrometheusRule")["spec"]
    return spec


def rules_for_the_test(directory: Path) -> Path:
    """The chart's rules (above), with only the failing-tasks rule's ``for`` shortened."""
    rules = chart_rules(directory)
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    assert rule["for"] == "5m", "the rule changed: check TEST_FOR still makes sense"
    rule["for"] = TEST_FOR
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


class Prometheus:
    """A real Prometheus process with its own storage, on a free port."""

    def __init__(self, binary: Path, directory: Path, target_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_for_the_test(directory))],
            "scrape_configs": [
                {
                    "job_name": "xpander-bridge",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.args = [
            str(binary),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.console.templates={directory}",
            f"--web.console.libraries={directory}",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited {self.process.returncode}:\n{self.tail()}")


@contextlib.asynccontextmanager
async def running(prometheus: Prometheus) -> AsyncIterator[httpx.AsyncClient]:
    prometheus.start()
    try:
        async with httpx.AsyncClient(base_url=prometheus.url, timeout=5) as client:

            async def ready() -> bool:
                prometheus.check_running()
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/-/ready")).status_code == 200
                return False

            await eventually(ready, timeout_s=20, what="prometheus to be ready")
            yield client
    finally:
        prometheus.stop()


async def scraped_once(client: httpx.AsyncClient) -> bool:
    targets = (await client.get("/api/v1/targets")).json()["data"]["activeTargets"]
    return any(t["health"] == "up" for t in targets)


async def firing(client: httpx.AsyncClient, alertname: str = ALERT) -> list[dict[str, Any]]:
    alerts = (await client.get("/api/v1/alerts")).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


async def instant(client: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    answer = (await client.get("/api/v1/query", params={"query": query})).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.timeout(90)
async def test_failing_tasks_fire_the_alert_in_a_real_prometheus(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    settings = EmulatorSettings(
        agent_ids=[AGENT],
        scenario=ScenarioSettings(
            task_count=12,
            arrival_interval_s=0.05,
            streaming_share=1.0,
            profile=TaskProfile(
                events_per_task=6,
                event_interval_s=0.01,
                fail_share=0.5,
                error_share=0.25,
                stop_share=0.0,
                pause_share=0.0,
                sub_task_share=0.0,
            ),
        ),
        seed=21,
    )
    started = time.monotonic()
    async with Emulator(settings) as emu, Bridge(bridge_config(emu, kafka, new_topic)) as bridge:
        assert bridge.http is not None
        prometheus = Prometheus(binary, tmp_path, bridge.http.port)
        async with running(prometheus) as client:
            await discovery_ready(bridge)
            # Counters at 0 are scraped before the first task ends: nothing is missed.
            await eventually(
                lambda: scraped_once(client), timeout_s=20, what="the first scrape of the bridge"
            )
            emu.start_scenario(emu.settings.scenario)
            failed = 0

            def enough_failures() -> bool:
                nonlocal failed
                failed = sum(1 for t in emu.control.tasks() if t["status"] in ("failed", "error"))
                return failed >= 3 and all(t["finished"] for t in emu.control.tasks())

            await eventually(
                enough_failures, timeout_s=20, what="the scenario to end with failures"
            )
            try:
                await eventually(lambda: firing_now(client), timeout_s=45, what=f"{ALERT} to fire")
            except AssertionError:
                alerts = (await client.get("/api/v1/alerts")).json()["data"]["alerts"]
                pytest.fail(f"{ALERT} did not fire; alerts: {alerts}\n{prometheus.tail()}")
            (alert,) = await firing(client)
    assert alert["labels"]["agent_id"] == AGENT
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"] == "docs/OPERATIONS.md#xpanderbridgetasksfailing"
    print(f"{ALERT} fired {time.monotonic() - started:.1f}s after the start ({failed} failed)")


async def firing_now(client: httpx.AsyncClient) -> bool:
    return bool(await firing(client))


@pytest.mark.timeout(120)
async def test_a_task_paused_past_its_agents_threshold_fires_the_alert(
    kafka: KafkaService, new_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """A task of PAUSED_AGENT pauses (the platform's PATCH to ``paused``: the
    emulator holds it there) past the agent's 3-second threshold: the alert
    fires for that agent; the task resumes: the alert resolves, the task ends."""
    binary = require_tool("prometheus")
    settings = EmulatorSettings(agent_ids=[PAUSED_AGENT], seed=12)
    profile = TaskProfile(
        events_per_task=30,
        events_jitter=0.0,
        event_interval_s=0.3,  # 9 s of run: time to see it executing
        pause_share=0.0,
        fail_share=0.0,
        error_share=0.0,
        stop_share=0.0,
        sub_task_share=0.0,
    )
    metric = f'xpander_bridge_oldest_paused_task_seconds{{agent_id="{PAUSED_AGENT}"}}'
    paused_now = f'sum(xpander_bridge_agent_tasks{{agent_id="{PAUSED_AGENT}", status="paused"}})'
    async with (
        Emulator(settings) as emu,
        Bridge(bridge_config(emu, kafka, new_topic)) as bridge,
        httpx.AsyncClient(base_url=emu.base_url, headers={"x-api-key": emu.api_key}) as api,
    ):
        assert bridge.http is not None
        prometheus = Prometheus(binary, tmp_path, bridge.http.port)
        async with running(prometheus) as client:
            await discovery_ready(bridge)
            await eventually(
                lambda: scraped_once(client), timeout_s=20, what="the first scrape of the bridge"
            )
            task_id = emu.create_task(agent_id=PAUSED_AGENT, profile=profile)["id"]

            def executing() -> bool:
                task = emu.task(task_id)
                assert task is not None and task["finished_at"] is None, "ended before it paused"
                return bool(task["status"] == "executing")

            await eventually(executing, timeout_s=20, what="the task to run (the bridge follows)")
            patch = await api.patch(f"/agent-execution/{task_id}/update", json={"status": "paused"})
            assert patch.status_code == 200, patch.text

            async def fired() -> bool:
                prometheus.check_running()
                return bool(await firing(client, PAUSED_ALERT))

            try:
                await eventually(fired, timeout_s=45, what=f"{PAUSED_ALERT} to fire")
            except AssertionError:
                alerts = (await client.get("/api/v1/alerts")).json()["data"]["alerts"]
                pytest.fail(f"{PAUSED_ALERT} did not fire; alerts: {alerts}\n{prometheus.tail()}")
            (alert,) = await firing(client, PAUSED_ALERT)
            # what Prometheus scraped: one paused task, waiting longer than 3 s
            [(age,)] = [r["value"][1:] for r in await instant(client, metric)]
            assert float(age) > PAUSED_THRESHOLD_MIN * 60
            assert [r["value"][1] for r in await instant(client, paused_now)] == ["1"]

            # the human answers: the task resumes, the alert resolves, the task ends
            patch = await api.patch(
                f"/agent-execution/{task_id}/update", json={"status": "executing"}
            )
            assert patch.status_code == 200, patch.text

            async def resolved() -> bool:
                prometheus.check_running()
                ages = [float(r["value"][1]) for r in await instant(client, metric)]
                return ages == [0.0] and not await firing(client, PAUSED_ALERT)

            await eventually(resolved, timeout_s=45, what=f"{PAUSED_ALERT} to resolve")
            final = await emu.wait_finished(task_id, 60)
            assert final["status"] == "completed"
    assert alert["labels"]["agent_id"] == PAUSED_AGENT
    assert alert["labels"]["severity"] == "warning"
    assert (
        alert["annotations"]["runbook_url"] == "docs/OPERATIONS.md#xpanderbridgetaskpausedtoolong"
    )


@pytest.mark.timeout(30)
def test_the_rule_copy_keeps_the_expression(tmp_path: Path) -> None:
    """The rules under test are the project's: the plain file's, but for the
    failing-tasks rule's ``for`` and the paused-task rule's per-agent threshold
    (the chart's own rendering, the shipped default kept for every other agent)."""
    original = yaml.safe_load(RULES.read_text())
    copy = yaml.safe_load(rules_for_the_test(tmp_path).read_text())
    rules = [r for g in original["groups"] for r in g["rules"]]
    copied = [r for g in copy["groups"] for r in g["rules"]]
    for rule, test_rule in zip(rules, copied, strict=True):
        if rule.get("alert") == PAUSED_ALERT:
            assert test_rule == {**rule, "expr": test_rule["expr"]}
            continue
        assert test_rule["expr"] == rule["expr"]
        if rule.get("alert") != ALERT:
            assert test_rule == rule
    (test_rule,) = [r for r in copied if r.get("alert") == ALERT]
    assert test_rule["for"] == TEST_FOR
    (paused,) = [r for r in copied if r.get("alert") == PAUSED_ALERT]
    metric = "max by (agent_id) (xpander_bridge_oldest_paused_task_seconds"
    assert paused["expr"].split("\nor\n") == [
        f'{metric}{{agent_id!="{PAUSED_AGENT}"}}) / 60 > {SHIPPED_PAUSED_THRESHOLD_MIN}',
        f'{metric}{{agent_id="{PAUSED_AGENT}"}}) / 60 > {PAUSED_THRESHOLD_MIN}',
    ]
    (shipped,) = [r for r in rules if r.get("alert") == PAUSED_ALERT]
    assert shipped["expr"].strip() == f"{metric}) / 60 > {SHIPPED_PAUSED_THRESHOLD_MIN}"
