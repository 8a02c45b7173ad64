"""``/metrics``, ``/livez`` and ``/readyz`` on the configured port."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.observability.health import Health
from bridge.observability.metrics import Metrics

__all__ = ["HealthServer"]


class HealthServer:
    def __init__(self, metrics: Metrics, health: Health, host: str, port: int) -> None:
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # The bound port, when port 0 asked the OS for a free one.
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics_handler(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def _livez(self, _: web.Request) -> web.Response:
        alive = self._health.alive
        return web.json_response({"alive": alive}, status=200 if alive else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._health.ready
        return web.json_response(
            {"ready": ready, "conditions": self._health.conditions()},
            status=200 if ready else 503,
        )
