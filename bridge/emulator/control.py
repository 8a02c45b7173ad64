"""The test and inspection surface, in Python (``Control``, also reached through
``Emulator``) and over HTTP under ``/_emulator/`` for tests that run the bridge
or the emulator as a subprocess. No API key is needed here: a test changes the
key through it.

HTTP:
    GET   /_emulator/health                      {"ok": true, "base_url"...}
    GET   /_emulator/stats                       counters and rates
    GET   /_emulator/settings                    the current EmulatorSettings
    GET   /_emulator/tasks[?status=&agent_id=]   one summary per task
    POST  /_emulator/tasks                       create a task (CreateTaskControl body)
    GET   /_emulator/tasks/{id}                  the Task JSON
    GET   /_emulator/tasks/{id}/events           emitted events (type, id, time, json)
    POST  /_emulator/tasks/{id}/wait?timeout=5   until the task is terminal (408 after)
    POST  /_emulator/tasks/{id}/raw              append the body's bytes to the stream,
                                                 verbatim ({"seq": slot taken})
    POST  /_emulator/tasks/{id}/huge-line        {"size_bytes": N, "fill": "x"}: one
                                                 `data:` line of N bytes, generated
    GET   /_emulator/inbox                       reports, metrics, counts, calls
    GET   /_emulator/faults                      the current FaultSettings
    PUT   /_emulator/faults                      replace them (FaultSettings body)
    PATCH /_emulator/faults                      change some of them
    GET   /_emulator/stream                      the current StreamSettings
    PUT   /_emulator/stream                      replace them (StreamSettings body)
    PATCH /_emulator/stream                      change some of them
    PUT   /_emulator/api-key                     {"api_key": "..."}
    POST  /_emulator/scenario                    {"preset": "burst", ...params} or
                                                 {"scenario": ScenarioSettings}
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.emulator.engine import Engine
from bridge.emulator.faults import FaultInjector
from bridge.emulator.inbox import Inbox, Received
from bridge.emulator.scenarios import preset
from bridge.emulator.settings import (
    FaultSettings,
    ScenarioSettings,
    StreamSettings,
    TaskProfile,
)
from bridge.emulator.tasks import EmittedEvent, TaskRun

__all__ = ["Control", "CreateTaskControl"]

PREFIX = "/_emulator"


class CreateTaskControl(BaseModel):
    """A task created from the control surface: no auth, and what is otherwise
    drawn at random can be forced."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(None, description="Default: the first configured agent.")
    events_streaming: bool = True
    text: str | None = None
    outcome: Literal["completed", "failed", "error", "stopped"] | None = None
    events: int | None = Field(None, ge=5, description="Exact event count on the stream.")
    profile: TaskProfile | None = Field(None, description="Default: settings.tasks.")
    unlisted: bool = Field(
        False,
        description="Left out of every listing, as when the platform's listing lags "
        "a create: only its id (GET, stream) finds it.",
    )


class HugeLineControl(BaseModel):
    """POST ``/_emulator/tasks/{id}/huge-line``."""

    model_config = ConfigDict(extra="forbid")

    size_bytes: int = Field(ge=0, description="Bytes after `data: `, before the blank line.")
    fill: str = Field("x", min_length=1, description="Repeated to fill the line (UTF-8).")


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


class Control:
    """Inspect and steer a running emulator."""

    def __init__(
        self, engine: Engine, faults: FaultInjector, inbox: Inbox, base_url: str = ""
    ) -> None:
        self.engine = engine
        self.faults_state = faults
        self.inbox = inbox
        self.base_url = base_url

    # -- Python API -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        s = self.engine.stats
        emitted_rate, sent_rate = s.rates()
        return {
            "events_emitted": s.events_emitted,
            "events_sent": s.events_sent,
            "events_per_s": round(emitted_rate, 1),
            "events_sent_per_s": round(sent_rate, 1),
            "malformed_emitted": s.malformed_emitted,
            "open_streams": s.open_streams,
            "connections": s.connections,
            "drops": s.drops,
            "stalls": s.stalls,
            "tasks": len(self.engine.tasks),
            "tasks_by_status": self.engine.status_counts(),
            "injected_http": dict(self.faults_state.injected),
            "hung_http": self.faults_state.hung,
            "oversized_http": self.faults_state.oversized,
            "calls": dict(self.inbox.calls),
        }

    def task(self, task_id: str) -> dict[str, Any] | None:
        run = self.engine.tasks.get(task_id)
        return run.wire if run else None

    def tasks(
        self, *, status: str | None = None, agent_id: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "agent_id": r.agent_id,
                "status": r.status,
                "events_streaming": r.streaming,
                "events": r.last_seq - r.injected,
                "subscribers": r.subscribers,
                "connections": r.connections,
                "finished": r.finished,
                "parent_execution": r.wire.get("parent_execution"),
            }
            for r in self.engine.tasks.values()
            if (status is None or r.status == status)
            and (agent_id is None or r.agent_id == agent_id)
        ]

    def events(self, task_id: str) -> list[EmittedEvent]:
        """Every kept event of a task, in order (empty for unknown tasks)."""
        run = self.engine.tasks.get(task_id)
        return run.emitted() if run else []

    def reports(self) -> list[Received]:
        return list(self.inbox.reports)

    def metrics(self) -> list[Received]:
        return list(self.inbox.metrics)

    def create_task(self, spec: CreateTaskControl | None = None, **fields: Any) -> dict[str, Any]:
        """Create a task; ``create_task(outcome="failed", events=12)`` works too."""
        spec = spec or CreateTaskControl(**fields)
        settings = self.engine.settings
        run = self.engine.create_task(
            spec.agent_id or settings.agent_ids[0],
            streaming=spec.events_streaming,
            namespace="control",
            text=spec.text,
            profile=spec.profile,
            outcome=spec.outcome,
            events=spec.events,
        )
        run.unlisted = spec.unlisted
        return run.wire

    async def wait_finished(self, task_id: str, deadline_s: float = 10.0) -> dict[str, Any]:
        """Wait until the task is terminal; returns its Task JSON."""
        run = self._run(task_id)
        await asyncio.wait_for(self.engine.wait_finished(run), deadline_s)
        return run.wire

    def inject_raw(self, task_id: str, data: bytes) -> int:
        """Append ``data`` to the task's stream, verbatim, after the events already
        emitted: connected streams write it at their next wake, and a replay
        (``replay="full"`` or a Last-Event-ID before it) sends it at that position.
        It takes the next SSE id number as its slot without writing an ``id:``
        line (put one in ``data`` to send it), so the next event's id skips it.
        Returns that slot. Raises KeyError for an unknown task, ValueError for
        empty data or a task that does not stream."""
        if not data:
            raise ValueError("nothing to inject")
        return self.engine.inject(self._run(task_id), bytes(data))

    def inject_huge_line(self, task_id: str, size_bytes: int, fill: bytes = b"x") -> int:
        """Append one SSE frame ``data: <size_bytes bytes of fill>\n\n`` to the
        task's stream, positioned like ``inject_raw``. The bytes are generated in
        64 KiB blocks at each write (and again on each replay), never held."""
        if size_bytes < 0:
            raise ValueError("size_bytes must be >= 0")
        if not fill or b"\n" in fill or b"\r" in fill:
            raise ValueError("fill must be non-empty and hold no line break")
        return self.engine.inject(self._run(task_id), b"", huge=(size_bytes, bytes(fill)))

    def _run(self, task_id: str) -> TaskRun:
        run = self.engine.tasks.get(task_id)
        if run is None:
            raise KeyError(task_id)
        return run

    @property
    def faults(self) -> FaultSettings:
        return self.engine.settings.faults

    def set_faults(self, faults: FaultSettings | None = None, **fields: Any) -> FaultSettings:
        """Replace the fault knobs (all of them: unspecified ones go back to default)."""
        new = faults if faults is not None else FaultSettings(**fields)
        self.engine.settings.faults = new
        self.faults_state.replace(new)
        return new

    def update_faults(self, **fields: Any) -> FaultSettings:
        """Change some fault knobs, keep the others."""
        merged = self.faults.model_dump()
        merged.update(fields)
        return self.set_faults(FaultSettings.model_validate(merged))

    @property
    def stream(self) -> StreamSettings:
        return self.engine.settings.stream

    def set_stream(self, stream: StreamSettings | None = None, **fields: Any) -> StreamSettings:
        """Replace the stream knobs (unspecified ones go back to default). Open
        streams see the change at their next wake; ids, replay and linger are
        decided per event, per connect and per task end."""
        new = stream if stream is not None else StreamSettings(**fields)
        self.engine.settings.stream = new
        return new

    def update_stream(self, **fields: Any) -> StreamSettings:
        """Change some stream knobs, keep the others."""
        merged = self.stream.model_dump()
        merged.update(fields)
        return self.set_stream(StreamSettings.model_validate(merged))

    def set_api_key(self, api_key: str) -> None:
        self.engine.settings.api_key = api_key

    def start_scenario(self, scenario: ScenarioSettings | str, **params: Any) -> str:
        """Start a scenario (a ``ScenarioSettings`` or a preset name); returns the id
        namespace of its tasks."""
        if isinstance(scenario, str):
            scenario = preset(scenario, **params)
        return self.engine.start_scenario(scenario)

    # -- HTTP -----------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(PREFIX + "/health", self._health)
        r.add_get(PREFIX + "/stats", self._stats)
        r.add_get(PREFIX + "/settings", self._settings)
        r.add_get(PREFIX + "/tasks", self._tasks)
        r.add_post(PREFIX + "/tasks", self._create)
        r.add_get(PREFIX + "/tasks/{task_id}", self._task)
        r.add_get(PREFIX + "/tasks/{task_id}/events", self._events)
        r.add_post(PREFIX + "/tasks/{task_id}/wait", self._wait)
        r.add_post(PREFIX + "/tasks/{task_id}/raw", self._raw)
        r.add_post(PREFIX + "/tasks/{task_id}/huge-line", self._huge_line)
        r.add_get(PREFIX + "/inbox", self._inbox)
        r.add_get(PREFIX + "/faults", self._get_faults)
        r.add_put(PREFIX + "/faults", self._put_faults)
        r.add_patch(PREFIX + "/faults", self._patch_faults)
        r.add_get(PREFIX + "/stream", self._get_stream)
        r.add_put(PREFIX + "/stream", self._put_stream)
        r.add_patch(PREFIX + "/stream", self._patch_stream)
        r.add_put(PREFIX + "/api-key", self._api_key)
        r.add_post(PREFIX + "/scenario", self._scenario)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            value = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return value

    @staticmethod
    def _invalid(exc: ValidationError | ValueError) -> web.Response:
        if isinstance(exc, ValidationError):
            detail: Any = orjson.loads(exc.json(include_url=False))
        else:
            detail = str(exc)
        return _json({"detail": detail}, 422)

    async def _health(self, request: web.Request) -> web.Response:
        settings = self.engine.settings
        return _json(
            {"ok": True, "base_url": self.base_url, "organization_id": settings.organization_id}
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())

    async def _settings(self, request: web.Request) -> web.Response:
        return _json(self.engine.settings.model_dump(mode="json"))

    async def _tasks(self, request: web.Request) -> web.Response:
        q = request.query
        return _json(self.tasks(status=q.get("status"), agent_id=q.get("agent_id")))

    async def _create(self, request: web.Request) -> web.Response:
        try:
            spec = CreateTaskControl.model_validate(await self._body(request))
        except ValidationError as exc:
            return self._invalid(exc)
        return _json(self.create_task(spec))

    async def _task(self, request: web.Request) -> web.Response:
        wire = self.task(request.match_info["task_id"])
        return _json(wire) if wire is not None else _json({"detail": "Task not found"}, 404)

    async def _events(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if task_id not in self.engine.tasks:
            return _json({"detail": "Task not found"}, 404)
        return _json([e.to_dict() for e in self.events(task_id)])

    async def _wait(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if task_id not in self.engine.tasks:
            return _json({"detail": "Task not found"}, 404)
        timeout = float(request.query.get("timeout", "10"))
        try:
            return _json(await self.wait_finished(task_id, timeout))
        except TimeoutError:
            return _json({"detail": "Task still running"}, 408)

    async def _raw(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        data = await request.read()
        return self._injected(task_id, lambda: self.inject_raw(task_id, data))

    async def _huge_line(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        try:
            spec = HugeLineControl.model_validate(await self._body(request))
        except ValidationError as exc:
            return self._invalid(exc)
        fill = spec.fill.encode()
        return self._injected(
            task_id, lambda: self.inject_huge_line(task_id, spec.size_bytes, fill)
        )

    def _injected(self, task_id: str, inject: Callable[[], int]) -> web.Response:
        if task_id not in self.engine.tasks:
            return _json({"detail": "Task not found"}, 404)
        try:
            seq = inject()
        except ValueError as exc:
            return self._invalid(exc)
        return _json({"task_id": task_id, "seq": seq})

    async def _inbox(self, request: web.Request) -> web.Response:
        return _json(self.inbox.to_dict())

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.model_dump(mode="json"))

    async def _put_faults(self, request: web.Request) -> web.Response:
        try:
            new = self.set_faults(FaultSettings.model_validate(await self._body(request)))
        except ValidationError as exc:
            return self._invalid(exc)
        return _json(new.model_dump(mode="json"))

    async def _patch_faults(self, request: web.Request) -> web.Response:
        try:
            new = self.update_faults(**await self._body(request))
        except ValidationError as exc:
            return self._invalid(exc)
        return _json(new.model_dump(mode="json"))

    async def _get_stream(self, request: web.Request) -> web.Response:
        return _json(self.stream.model_dump(mode="json"))

    async def _put_stream(self, request: web.Request) -> web.Response:
        try:
            new = self.set_stream(StreamSettings.model_validate(await self._body(request)))
        except ValidationError as exc:
            return self._invalid(exc)
        return _json(new.model_dump(mode="json"))

    async def _patch_stream(self, request: web.Request) -> web.Response:
        try:
            new = self.update_stream(**await self._body(request))
        except ValidationError as exc:
            return self._invalid(exc)
        return _json(new.model_dump(mode="json"))

    async def _api_key(self, request: web.Request) -> web.Response:
        key = (await self._body(request)).get("api_key")
        if not isinstance(key, str) or not key:
            return _json({"detail": "api_key must be a non-empty string"}, 422)
        self.set_api_key(key)
        return _json({"api_key": key})

    async def _scenario(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            if "scenario" in body:
                namespace = self.start_scenario(ScenarioSettings.model_validate(body["scenario"]))
            else:
                params = dict(body)
                name = params.pop("preset", None)
                if not isinstance(name, str):
                    return _json({"detail": "give `preset` or `scenario`"}, 422)
                namespace = self.start_scenario(name, **params)
        except (ValidationError, ValueError) as exc:
            return self._invalid(exc)
        return _json({"namespace": namespace})
