"""The REST side of the task API (``bridge.wire.Route``), answering the way
a FastAPI backend would: JSON bodies, ``{"detail": ...}`` errors, 422 with a
pydantic-style list of errors on a bad body, 401 on a missing or wrong
``x-api-key``.

Every route is also served under ``/{org}``: the official client puts the
organization id in front of REST paths when the base URL looks like the
agent-controller (port 9016, an ``agent-controller`` host), and the emulator's
default CLI port is 9016.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bridge.emulator.activity import activity_body
from bridge.emulator.engine import Engine, iso_time
from bridge.emulator.faults import FaultInjector
from bridge.emulator.hostile import send_padded
from bridge.emulator.inbox import Inbox
from bridge.emulator.streams import EventStreams, not_found
from bridge.emulator.tasks import TaskRun
from bridge.platform.models import ExecutionMetricsReport, TaskInput, TaskReportRequest
from bridge.wire import API_KEY_HEADER, STATUSES, Route

__all__ = ["TaskApi", "json_response"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

#: request fields copied onto the created Task when present
_CARRIED_CREATE_FIELDS = (
    "title",
    "source",
    "triggering_agent_id",
    "parent_execution",
    "payload_extension",
    "output_format",
    "output_schema",
    "additional_context",
    "instructions_override",
    "expected_output",
    "llm_model_provider",
    "llm_model_name",
)


class CreateTaskRequest(BaseModel):
    """POST ``/agent-execution/{agent_id}``; the official client sends many more
    optional fields, all accepted."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    input: TaskInput | None = None
    events_streaming: bool | None = False


class UpdateTaskRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str | None = None
    result: str | None = None
    tool_call_payload_extension: dict[str, Any] | None = None
    source: str | None = None
    last_executed_node_id: str | None = None

    @field_validator("status")
    @classmethod
    def _known_status(cls, value: str | None) -> str | None:
        if value is not None and value not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}")
        return value


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(value), content_type="application/json", headers=headers
    )


def _path_id(request: web.Request) -> str | None:
    """The id a call is about, for ``HttpFaultRule.ids``: the task id when the
    path has one, else the agent id, else the user id."""
    info = request.match_info
    return info.get("task_id") or info.get("agent_id") or info.get("user_id")


def _detail(status: int, detail: str) -> web.Response:
    return json_response({"detail": detail}, status)


class _BodyError(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _unprocessable(errors: list[dict[str, Any]]) -> web.Response:
    return json_response({"detail": errors}, 422)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise _BodyError(
            _unprocessable(
                [
                    {
                        "type": "json_invalid",
                        "loc": ["body", exc.pos],
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": exc.msg},
                    }
                ]
            )
        ) from exc


def _validate(model: type[M], value: Any) -> M:
    if value is None:
        raise _BodyError(
            _unprocessable(
                [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
            )
        )
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = [
            {
                "type": e["type"],
                "loc": ["body", *e["loc"]],
                "msg": e["msg"],
                "input": e.get("input"),
            }
            for e in exc.errors(include_url=False, include_context=False)
        ]
        raise _BodyError(_unprocessable(orjson.loads(orjson.dumps(errors, default=str)))) from exc


class TaskApi:
    """REST handlers plus the middleware every API call passes: delay, injected
    errors, auth, organization check. ``/_emulator/`` routes skip all of it."""

    def __init__(self, engine: Engine, faults: FaultInjector, inbox: Inbox) -> None:
        self.engine = engine
        self.faults = faults
        self.inbox = inbox
        self.streams = EventStreams(engine, faults)
        self._kinds: dict[Handler, tuple[str, str]] = {}

    # -- wiring -----------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        # (method, path, handler, kind, name): `kind` is what counters and most
        # fault rules use, `name` a finer one a rule may target instead
        table: list[tuple[str, str, Handler, str, str]] = [
            ("GET", Route.LIST_USER_TASKS, self.list_user_tasks, "list", "list_user_tasks"),
            ("GET", Route.LIST_TASKS, self.list_tasks, "list", "list_tasks"),
            ("GET", Route.GET_TASK, self.get_task, "get", "get"),
            ("PATCH", Route.UPDATE_TASK, self.update_task, "update", "update"),
            ("POST", Route.REPORT_TASK, self.report_task, "report", "report"),
            ("POST", "/agent-execution/{agent_id}", self.create_task, "create", "create"),
            ("DELETE", "/agent-execution/{task_id}", self.stop_task, "stop", "stop"),
            ("GET", Route.ACTIVITY_LOG, self.activity, "activity", "activity"),
            ("POST", Route.REPORT_METRICS, self.report_metrics, "metrics", "metrics"),
        ]
        for method, path, handler, kind, name in table:
            self._kinds[handler] = (kind, name)
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/{org}" + path, handler)
        self._kinds[self.streams.handle] = ("stream", "stream")
        app.router.add_get("/{org}" + Route.TASK_EVENTS, self.streams.handle)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        kinds = self._kinds.get(request.match_info.handler)
        if kinds is None:
            return await handler(request)
        kind, name = kinds
        inbox = self.inbox
        inbox.calls[kind] += 1
        response = await self._guarded(request, handler, kind, name)
        inbox.answers[f"{kind} {response.status}"] += 1
        return response

    async def _guarded(
        self, request: web.Request, handler: Handler, kind: str, name: str
    ) -> web.StreamResponse:
        delay = self.faults.delay(kind, name)
        if delay:
            await asyncio.sleep(delay)
        fault = self.faults.http_fault(kind, name=name, path_id=_path_id(request))
        if fault is not None and fault.hang:
            return await self._hang(request)
        if fault is not None and fault.oversize is None:
            headers = {}
            if fault.retry_after is not None:
                # integral seconds are what most servers send; keep fractions if asked
                ra = fault.retry_after
                headers["Retry-After"] = str(int(ra)) if ra == int(ra) else str(ra)
            return json_response({"detail": "injected fault"}, fault.status, headers)
        key = request.headers.get(API_KEY_HEADER)
        if key is None or key != self.engine.settings.api_key:
            return _detail(401, "Invalid or missing API key")
        org = request.match_info.get("org")
        if org is not None and org != self.engine.settings.organization_id:
            return not_found("Organization not found")
        try:
            response = await handler(request)
        except _BodyError as exc:
            response = exc.response
        if fault is not None and fault.oversize is not None and isinstance(response, web.Response):
            return await send_padded(
                request, response, fault.oversize, content_length=fault.content_length
            )
        return response

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer. A client that gives up cancels this handler
        (``handler_cancellation``); a stopping emulator sets ``closing``, and the
        connection is then closed unanswered so shutdown does not wait on it."""
        closing = self.engine.closing
        assert closing is not None
        await closing.wait()
        transport = request.transport
        if transport is not None:
            transport.close()
        # nothing reaches the client any more: the transport is gone
        return web.Response(status=503)

    # -- helpers ------------------------------------------------------------------

    def _task(self, task_id: str) -> TaskRun | None:
        return self.engine.tasks.get(task_id)

    def _agent_ok(self, agent_id: str) -> bool:
        settings = self.engine.settings
        return not settings.strict_agents or agent_id in settings.agent_ids

    @staticmethod
    def _filtered(runs: list[TaskRun], query: Any, *, skip_user: bool = False) -> list[Any]:
        """The listing as the platform answers it: newest first, each filter an
        exact match on one value (``status=executing``; a filter given twice
        uses its first value). The status is checked before building an item,
        so a filtered listing of a long history stays cheap."""
        wanted = {
            "user_id": query.get("user_id") if not skip_user else None,
            "parent_task_id": query.get("parent_task_id"),
            "triggering_agent_id": query.get("triggering_agent_id"),
            "status": query.get("status"),
            "internal_status": query.get("internal_status"),
        }
        wanted = {k: v for k, v in wanted.items() if v is not None}
        status = wanted.pop("status", None)
        # one pass over the runs (a long history is walked by every listing)
        runs = [
            run
            for run in runs
            if not run.unlisted and (status is None or run.wire["status"] == status)
        ]
        items = []
        for run in sorted(runs, key=lambda r: r.wire["created_at"], reverse=True):
            item = run.list_item()
            if all(item.get(k) == v for k, v in wanted.items()):
                items.append(item)
        return items

    def _listing(self, name: str, query: Any, items: list[Any]) -> web.Response:
        """Answer a listing, counting its body bytes in ``inbox.list_bytes``."""
        body = orjson.dumps(items)
        status = query.get("status")
        key = name if status is None else f"{name} status={status}"
        self.inbox.list_bytes[key] += len(body)
        return web.Response(body=body, content_type="application/json")

    # -- handlers -----------------------------------------------------------------

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["agent_id"]
        if not self._agent_ok(agent_id):
            return _detail(404, "Agent not found")
        runs = self.engine.find(lambda r: r.agent_id == agent_id)
        return self._listing("list_tasks", request.query, self._filtered(runs, request.query))

    async def list_user_tasks(self, request: web.Request) -> web.StreamResponse:
        user_id = request.match_info["user_id"]
        runs = self.engine.find(lambda r: r.user_id == user_id)
        items = self._filtered(runs, request.query, skip_user=True)
        return self._listing("list_user_tasks", request.query, items)

    async def get_task(self, request: web.Request) -> web.StreamResponse:
        run = self._task(request.match_info["task_id"])
        if run is None:
            return _detail(404, "Task not found")
        return json_response(run.wire)

    async def create_task(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["agent_id"]
        if not self._agent_ok(agent_id):
            return _detail(404, "Agent not found")
        body = _validate(CreateTaskRequest, await _body(request))
        if body.id is not None and body.id in self.engine.tasks:
            # a create retried after a lost answer gets the same task back
            return json_response(self.engine.tasks[body.id].wire)
        task_input = body.input or TaskInput()
        extra = body.model_extra or {}
        carried = {k: extra[k] for k in _CARRIED_CREATE_FIELDS if extra.get(k) is not None}
        user = task_input.user.model_dump(mode="json") if task_input.user else None
        run = self.engine.create_task(
            agent_id,
            streaming=bool(body.events_streaming),
            task_id=body.id,
            text=task_input.text or "",
            files=list(task_input.files or []),
            user=user,
            extra=carried,
        )
        return json_response(run.wire)

    async def update_task(self, request: web.Request) -> web.StreamResponse:
        run = self._task(request.match_info["task_id"])
        if run is None:
            return _detail(404, "Task not found")
        body = _validate(UpdateTaskRequest, await _body(request))
        self.engine.update(
            run,
            status=body.status,
            result=body.result,
            payload_extension=body.tool_call_payload_extension,
            source=body.source,
        )
        if body.last_executed_node_id is not None:
            run.wire["last_executed_node_id"] = body.last_executed_node_id
        return json_response(run.wire)

    async def stop_task(self, request: web.Request) -> web.StreamResponse:
        run = self._task(request.match_info["task_id"])
        if run is None:
            return _detail(404, "Task not found")
        self.engine.stop(run)
        return json_response(run.wire)

    async def activity(self, request: web.Request) -> web.StreamResponse:
        run = self._task(request.match_info["task_id"])
        if run is None or run.agent_id != request.match_info["agent_id"]:
            return _detail(404, "Activity log not found")
        body = activity_body(run, self.engine.settings.activity_min_bytes)
        return web.Response(body=body, content_type="application/json")

    async def report_task(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["agent_id"]
        if not self._agent_ok(agent_id):
            return _detail(404, "Agent not found")
        raw = await _body(request)
        report = _validate(TaskReportRequest, raw)
        status = "completed" if report.is_success is not False else "failed"
        run = self.engine.tasks.get(report.id) if report.id else None
        if run is None:
            run = self.engine.create_task(
                agent_id,
                streaming=False,
                task_id=report.id,
                namespace="report",
                text=report.input or "",
                extra={"source": "external"},
                autostart=False,
            )
        wire = run.wire
        if report.input is not None:
            wire["input"]["text"] = report.input
        wire["result"] = report.result
        wire["tokens"] = report.tokens.model_dump(mode="json") if report.tokens else None
        wire["used_tools"] = list(report.used_tools or [])
        if wire["started_at"] is None:
            wire["started_at"] = iso_time(time.time() - (report.duration or 0))
        wire["duration"] = report.duration or 0
        if run.finished:
            # a second report of a finished task: an upsert, no new events
            wire["status"] = status
            wire["finished_at"] = wire["updated_at"] = iso_time(time.time())
        else:
            self.engine.terminate(run, status, invent=False)
        self.inbox.add_report(agent_id, run.id, raw)
        return json_response(wire)

    async def report_metrics(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.match_info["agent_id"]
        if not self._agent_ok(agent_id):
            return _detail(404, "Agent not found")
        raw = await _body(request)
        metrics = _validate(ExecutionMetricsReport, raw)
        self.inbox.add_metrics(agent_id, metrics.execution_id, raw)
        return json_response({"status": "recorded", "execution_id": metrics.execution_id})
