"""The alert rules in a real Prometheus, scraping a real bridge: the emulator
makes an agent's tasks fail, the bridge counts them, Prometheus scrapes
``/metrics`` and evaluates the project's rules, and ``XpanderBridgeTasksFailing``
fires for that agent.

This proves what the promtool unit tests cannot: that the metric the bridge
actually exports, scraped the way Prometheus scrapes it, drives the rule. It
also shows why the counters start at 0: the first scrape happens before any
task finishes, so ``rate()`` and ``increase()`` see every failure.
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
from deploy.helpers import RULES, require_tool

AGENT = "agent-flaky"
ALERT = "XpanderBridgeTasksFailing"
#: The rule's ``for:`` in the test: the real 5 minutes would make this test
#: last 5 minutes. Only ``for`` changes; the expression (and its 15-minute
#: window, which works as it is on a few seconds of data) stays the project's.
TEST_FOR = "2s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rules_for_the_test(directory: Path) -> Path:
    """The project's rules file, with only the failing-tasks rule's ``for`` shortened."""
    rules = yaml.safe_load(RULES.read_text())
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


async def firing(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    alerts = (await client.get("/api/v1/alerts")).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]


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


@pytest.mark.timeout(10)
def test_the_rule_copy_keeps_the_expression(tmp_path: Path) -> None:
    original = yaml.safe_load(RULES.read_text())
    copy = yaml.safe_load(rules_for_the_test(tmp_path).read_text())
    rules = [r for g in original["groups"] for r in g["rules"]]
    copied = [r for g in copy["groups"] for r in g["rules"]]
    for rule, test_rule in zip(rules, copied, strict=True):
        assert test_rule["expr"] == rule["expr"]
        if rule.get("alert") != ALERT:
            assert test_rule == rule
    (test_rule,) = [r for r in copied if r.get("alert") == ALERT]
    assert test_rule["for"] == TEST_FOR
