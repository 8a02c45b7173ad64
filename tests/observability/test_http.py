"""``/metrics``, ``/livez`` and ``/readyz`` served for real, on a free port,
with ``Health`` driven directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from support.metrics import sample

from bridge.observability.health import Health
from bridge.observability.http import HealthServer
from bridge.observability.metrics import Metrics, TaskEndStatus

pytestmark = pytest.mark.timeout(10)


@dataclass
class Served:
    metrics: Metrics
    health: Health
    server: HealthServer
    client: httpx.AsyncClient

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(f"http://127.0.0.1:{self.server.port}{path}")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = Metrics(agent_ids=["agent-1"])
    # Stale after 0.3 s so the liveness test does not wait 10 s.
    health = Health(metrics, stale_after_s=0.3)
    server = HealthServer(metrics, health, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            yield Served(metrics, health, server, client)
    finally:
        await server.aclose()
        await server.aclose()  # twice is fine


async def test_the_server_binds_a_free_port_when_asked_for_0(served: Served) -> None:
    assert served.server.port > 0


async def test_metrics_parse_as_prometheus_text(served: Served) -> None:
    served.metrics.tasks_finished("agent-1", TaskEndStatus.FAILED).inc(2)
    served.metrics.publish_latency.observe(0.004)
    served.metrics.queue_depth.set(7)
    response = await served.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["xpander_bridge_tasks_finished"].type == "counter"
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    failed = (("agent_id", "agent-1"), ("status", "failed"))
    assert values[("xpander_bridge_tasks_finished_total", failed)] == 2
    assert values[("xpander_bridge_queue_depth", ())] == 7
    assert values[("xpander_bridge_publish_latency_seconds_count", ())] == 1
    assert values[("xpander_bridge_publish_latency_seconds_bucket", (("le", "0.005"),))] == 1
    # Zero-initialised series are served before anything happened.
    completed = (("agent_id", "agent-1"), ("status", "completed"))
    assert values[("xpander_bridge_tasks_finished_total", completed)] == 0
    assert all(name.startswith("xpander_bridge_") for name in families)


async def test_livez_is_200_while_the_loop_beats_and_503_when_the_beat_is_stale(
    served: Served,
) -> None:
    heartbeat = asyncio.create_task(served.health.heartbeat(period_s=0.05))
    try:
        await asyncio.sleep(0.5)  # longer than stale_after_s: only the beat keeps it alive
        response = await served.get("/livez")
        assert response.status_code == 200
        assert response.json() == {"alive": True}
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
    # The heartbeat stopped, as it does when the loop is blocked: it goes stale.
    await asyncio.sleep(0.4)
    response = await served.get("/livez")
    assert response.status_code == 503
    assert response.json() == {"alive": False}


async def test_readyz_is_503_until_every_condition_holds(served: Served) -> None:
    response = await served.get("/readyz")
    assert response.status_code == 503, "no condition reported yet is not ready"
    assert response.json() == {"ready": False, "conditions": {}}

    served.health.set("kafka", False, "connecting")
    served.health.set("platform", False, "first listing pending")
    response = await served.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "conditions": {
            "kafka": {"ok": False, "detail": "connecting"},
            "platform": {"ok": False, "detail": "first listing pending"},
        },
    }
    assert sample(served.metrics, "xpander_bridge_ready") == 0

    served.health.set("kafka", True)
    response = await served.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["conditions"]["kafka"] == {"ok": True, "detail": ""}
    assert body["conditions"]["platform"]["ok"] is False

    served.health.set("platform", True)
    response = await served.get("/readyz")
    assert response.status_code == 200
    assert response.json()["ready"] is True
    assert sample(served.metrics, "xpander_bridge_ready") == 1

    # Readiness is not sticky: one condition failing again makes it 503 again.
    served.health.set("platform", False, "authentication refused (HTTP 401)")
    response = await served.get("/readyz")
    assert response.status_code == 503
    assert response.json()["conditions"]["platform"] == {
        "ok": False,
        "detail": "authentication refused (HTTP 401)",
    }
    assert sample(served.metrics, "xpander_bridge_ready") == 0


async def test_unknown_paths_are_404(served: Served) -> None:
    assert (await served.get("/")).status_code == 404
    assert (await served.get("/metrics/extra")).status_code == 404
