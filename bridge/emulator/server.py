"""``Emulator``: the xpander task API (REST and event streams) on one port.

    async with Emulator(EmulatorSettings(seed=7)) as emu:
        Tasks(configuration=Configuration(base_url=emu.base_url,
                                          api_key=emu.api_key,
                                          organization_id=emu.organization_id))

States: unopened -> open (``start()`` / ``__aenter__``) -> closed (``aclose()``,
safe to call twice). Closing ends every open stream first, so no handler is left
waiting on aiohttp's shutdown timeout.
"""

from __future__ import annotations

import asyncio
import enum
from types import TracebackType
from typing import Any

from aiohttp import web

from bridge.emulator.api import TaskApi
from bridge.emulator.control import Control, CreateTaskControl
from bridge.emulator.engine import Engine
from bridge.emulator.faults import FaultInjector
from bridge.emulator.inbox import Inbox, Received
from bridge.emulator.settings import (
    EmulatorSettings,
    FaultSettings,
    ScenarioSettings,
    StreamSettings,
)
from bridge.emulator.tasks import EmittedEvent

__all__ = ["Emulator"]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Emulator:
    """The emulator as an async context manager. Inspection and control are on
    ``emu.control`` (the same surface as ``/_emulator/`` over HTTP); the common
    ones are repeated here."""

    def __init__(self, settings: EmulatorSettings | None = None, **overrides: Any) -> None:
        base = settings or EmulatorSettings()
        if overrides:
            base = base.model_copy(update=overrides)
            base = EmulatorSettings.model_validate(base.model_dump())
        # a private copy: run-time changes (faults, api key) must not leak back
        self.settings = base.model_copy(deep=True)
        self.engine = Engine(self.settings)
        self.inbox = Inbox()
        self._faults = FaultInjector(self.settings.faults, self.settings.seed)
        self.api = TaskApi(self.engine, self._faults, self.inbox)
        self.control = Control(self.engine, self._faults, self.inbox)
        self._runner: web.AppRunner | None = None
        self._state = _State.UNOPENED
        self.port = 0

    # -- lifetime ---------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self.api.middleware], client_max_size=16 * 1024**2)
        self.control.add_routes(app)  # first: /_emulator/... must never reach /{org}/...
        self.api.add_routes(app)
        return app

    async def start(self) -> None:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"emulator is {self._state.value}")
        self._state = _State.OPEN
        await self.engine.start()
        # handler_cancellation: a stream whose client went away is cancelled at
        # once instead of waiting for its next write to fail
        self._runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, backlog=4096)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self.control.base_url = self.base_url

    async def aclose(self) -> None:
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        await self.engine.aclose()  # wakes every stream so each handler returns
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- addresses ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The REST base (``XPANDER_BASE_URL``); streams are under ``{base_url}/{org}``."""
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def organization_id(self) -> str:
        return self.settings.organization_id

    @property
    def api_key(self) -> str:
        return self.settings.api_key

    def events_url(self, task_id: str) -> str:
        return f"{self.base_url}/{self.organization_id}/agent-execution/{task_id}/events"

    # -- shortcuts to ``control`` ---------------------------------------------------------

    def set_api_key(self, api_key: str) -> None:
        self.control.set_api_key(api_key)

    def set_faults(self, faults: FaultSettings | None = None, **fields: Any) -> FaultSettings:
        return self.control.set_faults(faults, **fields)

    def update_faults(self, **fields: Any) -> FaultSettings:
        return self.control.update_faults(**fields)

    def set_stream(self, stream: StreamSettings | None = None, **fields: Any) -> StreamSettings:
        return self.control.set_stream(stream, **fields)

    def update_stream(self, **fields: Any) -> StreamSettings:
        return self.control.update_stream(**fields)

    def inject_raw(self, task_id: str, data: bytes) -> int:
        return self.control.inject_raw(task_id, data)

    def inject_huge_line(self, task_id: str, size_bytes: int, fill: bytes = b"x") -> int:
        return self.control.inject_huge_line(task_id, size_bytes, fill)

    def create_task(self, spec: CreateTaskControl | None = None, **fields: Any) -> dict[str, Any]:
        return self.control.create_task(spec, **fields)

    def events(self, task_id: str) -> list[EmittedEvent]:
        return self.control.events(task_id)

    def reports(self) -> list[Received]:
        return self.control.reports()

    def metrics(self) -> list[Received]:
        return self.control.metrics()

    def stats(self) -> dict[str, Any]:
        return self.control.stats()

    def task(self, task_id: str) -> dict[str, Any] | None:
        return self.control.task(task_id)

    def start_scenario(self, scenario: ScenarioSettings | str, **params: Any) -> str:
        return self.control.start_scenario(scenario, **params)

    async def wait_finished(self, task_id: str, deadline_s: float = 10.0) -> dict[str, Any]:
        return await self.control.wait_finished(task_id, deadline_s)
