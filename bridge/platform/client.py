"""The xpander API client the bridge uses: one aiohttp session for REST calls
and one for event streams, and the one place where aiohttp errors and HTTP
statuses become ``bridge.errors``.

Why aiohttp and not httpx: measured against the emulator on one machine,
opening 10,000 SSE streams took 3.7 CPU-seconds and 17 KB per stream with
aiohttp, against 12.9 CPU-seconds and 38 KB with httpx (pools of 128, since
httpcore scans a whole pool on every request); REST calls at 8 in flight ran
3.5x faster. The bridge lives on thousands of long-lived streams, so that is
its memory and its start-up time.

It never retries: a failed call raises a typed error and the caller's runner
decides (back off, drop, halt). Each call is counted by endpoint and status
class, never by URL, so the label set stays bounded.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import certifi
import orjson

from bridge import __version__
from bridge.config import PlatformConfig, StreamsConfig
from bridge.errors import (
    BridgeError,
    InvalidDataError,
    PlatformRejectedError,
    RequestTimeoutError,
    StreamInterrupted,
    UnavailableError,
    error_for_status,
)
from bridge.observability.metrics import Metrics
from bridge.wire import API_KEY_HEADER, Route, events_root
from bridge.wire import path as route_path

__all__ = ["EventStream", "PlatformClient", "parse_retry_after", "proxy_from_env"]

_MAX_ERROR_BODY = 300
#: same-origin redirects followed for one request, at most
_MAX_REDIRECTS = 3


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def _tls_context() -> ssl.SSLContext:
    """The system's trust store plus certifi's (what httpx trusted), so a slim
    image without CA certificates still verifies the platform."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    return context


def proxy_from_env(url: str) -> str | None:
    """The proxy for ``url`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``.

    Resolved once per client, not per request: aiohttp's ``trust_env`` looks
    the environment and ``~/.netrc`` up in a thread on every request, which
    was 40% of the CPU while opening 10,000 streams.
    """
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class EventStream:
    """One open SSE response: its body as raw byte chunks, until it ends.

    ``chunks()`` raises ``RequestTimeoutError`` when no byte came within the
    idle timeout and ``StreamInterrupted`` when the connection broke (or was
    closed with ``close()``); a clean end of the body just ends the iteration.
    """

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
                del chunk  # not pinned while the stream waits for more
        except TimeoutError as exc:  # aiohttp's sock_read timeout
            raise RequestTimeoutError("no bytes on the stream within the idle timeout") from exc
        except aiohttp.ClientError as exc:
            raise StreamInterrupted(f"stream interrupted: {type(exc).__name__}") from exc

    def close(self) -> None:
        """Drop the connection; a reader waiting in ``chunks()`` is woken."""
        self._response.close()

    async def finish(self, grace_s: float) -> None:
        """The task ended: let the server end the body (it does right after
        ``task_finished``) for up to ``grace_s``, discarding what comes, so the
        connection goes back to the pool instead of being reset: the next
        stream skips a TCP (and TLS) handshake, and neither side handles a
        reset. Whatever goes wrong here only means the connection is closed."""
        content = self._response.content
        try:
            async with asyncio.timeout(grace_s):
                while await content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            pass


class PlatformClient:
    """Async context manager; ``aclose()`` is safe to call twice.

    The sessions are made on first use (aiohttp wants a running loop) and
    share one TLS context. REST calls go through a semaphore of
    ``platform.rest_connections`` over a pool of as many keep-alive
    connections; streams have a pool without a limit, because the
    supervisor's admission semaphore already bounds them.
    """

    def __init__(self, platform: PlatformConfig, streams: StreamsConfig, metrics: Metrics) -> None:
        if platform.api_key is None or not platform.organization_id:
            raise ValueError("the platform client needs an API key and an organization id")
        self._metrics = metrics
        self._platform = platform
        self._base = platform.base_url.rstrip("/")
        self._events_root = events_root(platform.events_base, platform.organization_id)
        self._headers = {
            API_KEY_HEADER: platform.api_key.get_secret_value(),
            "user-agent": f"xpander-bridge/{__version__}",
        }
        self._rest_timeout = aiohttp.ClientTimeout(
            total=platform.request_timeout_s, connect=platform.connect_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=platform.connect_timeout_s,
            sock_read=streams.idle_timeout_s,  # no bytes for this long: the stream is idle
        )
        self._rest_proxy = proxy_from_env(self._base)
        self._stream_proxy = proxy_from_env(self._events_root)
        self._rest_slots = asyncio.Semaphore(platform.rest_connections)
        self._max_body = platform.max_response_bytes
        self._connect_slots = asyncio.Semaphore(streams.connect_concurrency)
        self._rest: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for session in (self._rest, self._streams):
                if session is not None:
                    await session.close()

    def _session(self, *, limit: int, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
        if self._closed:
            raise UnavailableError("the platform client is closed")
        if self._tls is None:
            self._tls = _tls_context()
        return aiohttp.ClientSession(
            headers=self._headers,
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=limit, ssl=self._tls),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client keeps no cookies
            trust_env=False,  # proxies come from proxy_from_env, once
            raise_for_status=False,
        )

    def _rest_session(self) -> aiohttp.ClientSession:
        if self._rest is None:
            limit = self._platform.rest_connections
            self._rest = self._session(limit=limit, timeout=self._rest_timeout)
        return self._rest

    def _stream_session(self) -> aiohttp.ClientSession:
        if self._streams is None:
            self._streams = self._session(limit=0, timeout=self._stream_timeout)
        return self._streams

    # --- REST ---------------------------------------------------------------

    async def list_agent_tasks(
        self, agent_id: str, status: str | None = None
    ) -> list[dict[str, Any]]:
        """An agent's tasks; with ``status``, only those at that status (the
        listing's ``status`` filter: one value, an exact match)."""
        path = _path(Route.LIST_TASKS, agent_id=agent_id) + _status_query(status)
        items = await self._request("GET", path, endpoint="list_tasks")
        return _as_list_of_objects(items, "task list")

    async def list_user_tasks(
        self, user_id: str, status: str | None = None
    ) -> list[dict[str, Any]]:
        """A user's tasks (across agents); ``status`` as in ``list_agent_tasks``."""
        path = _path(Route.LIST_USER_TASKS, user_id=user_id) + _status_query(status)
        items = await self._request("GET", path, endpoint="list_user_tasks")
        return _as_list_of_objects(items, "user task list")

    async def get_task(self, task_id: str) -> dict[str, Any]:
        task = await self._request(
            "GET", _path(Route.GET_TASK, task_id=task_id), endpoint="get_task"
        )
        if not isinstance(task, dict):
            raise InvalidDataError("the task status answer is not a JSON object")
        return task

    async def get_activity_log(self, agent_id: str, task_id: str) -> dict[str, Any]:
        """The task's activity thread (``AgentActivityThread`` in the official
        client: ``id``, ``created_at``, ``messages`` of user/agent messages, tool
        calls, reasoning, ...), as the JSON object the platform sent."""
        thread = await self._request(
            "GET",
            _path(Route.ACTIVITY_LOG, agent_id=agent_id, task_id=task_id),
            endpoint="get_activity_log",
        )
        if not isinstance(thread, dict):
            raise InvalidDataError("the activity log answer is not a JSON object")
        return thread

    async def get_activity_log_bytes(self, agent_id: str, task_id: str) -> bytes:
        """The task's activity thread as the bytes the platform sent (checked to
        be a JSON object): the activity topic carries them untouched, so no
        value changes in a parse and re-encode (big integers, key order)."""
        content = await self._request(
            "GET",
            _path(Route.ACTIVITY_LOG, agent_id=agent_id, task_id=task_id),
            endpoint="get_activity_log",
            raw=True,
        )
        if not content.lstrip().startswith(b"{"):
            raise InvalidDataError("the activity log answer is not a JSON object")
        try:
            orjson.loads(content)
        except orjson.JSONDecodeError:
            try:  # orjson refuses nesting past 1,024 levels; the standard parser may not
                json.loads(content)
            except (ValueError, RecursionError) as exc:
                raise InvalidDataError("get_activity_log: the answer is not JSON") from exc
        return bytes(content)

    async def create_task(self, agent_id: str, body: bytes) -> dict[str, Any]:
        """POST ``/agent-execution/{agent_id}`` (``Tasks.acreate``): the body is
        the create request, ``id`` included when the caller wants that task id."""
        task = await self._request(
            "POST",
            _path(Route.TASK_CRUD, agent_or_task_id=agent_id),
            endpoint="create_task",
            body=body,
        )
        return _as_task(task, "create")

    async def update_task(self, task_id: str, body: bytes) -> dict[str, Any]:
        """PATCH ``/agent-execution/{task_id}/update`` (``Tasks.aupdate``)."""
        task = await self._request(
            "PATCH", _path(Route.UPDATE_TASK, task_id=task_id), endpoint="update_task", body=body
        )
        return _as_task(task, "update")

    async def stop_task(self, task_id: str) -> dict[str, Any]:
        """DELETE ``/agent-execution/{task_id}`` (``Tasks.astop``)."""
        task = await self._request(
            "DELETE", _path(Route.TASK_CRUD, agent_or_task_id=task_id), endpoint="stop_task"
        )
        return _as_task(task, "stop")

    async def report_task(self, agent_id: str, body: bytes) -> Any:
        return await self._request(
            "POST", _path(Route.REPORT_TASK, agent_id=agent_id), endpoint="report_task", body=body
        )

    async def report_metrics(self, agent_id: str, body: bytes) -> Any:
        return await self._request(
            "POST",
            _path(Route.REPORT_METRICS, agent_id=agent_id),
            endpoint="report_metrics",
            body=body,
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        body: bytes | None = None,
        raw: bool = False,
    ) -> Any:
        headers = {"content-type": "application/json"} if body is not None else None
        session = self._rest_session()
        url = self._base + path
        try:
            async with self._rest_slots:
                for _ in range(_MAX_REDIRECTS + 1):
                    async with session.request(
                        method,
                        url,
                        data=body,
                        headers=headers,
                        proxy=self._rest_proxy,
                        allow_redirects=False,
                    ) as response:
                        status = response.status
                        if _is_redirect(status):
                            self._count(endpoint, _status_class(status))
                            url = _same_origin_target(endpoint, url, response)
                            continue
                        content = await _read_capped(response, self._max_body, endpoint)
                        retry_after = response.headers.get("retry-after")
                        break
                else:
                    raise PlatformRejectedError(f"{endpoint}: more than {_MAX_REDIRECTS} redirects")
        except TimeoutError as exc:
            self._count(endpoint, "timeout")
            raise RequestTimeoutError(f"{endpoint}: timed out") from exc
        except aiohttp.ClientError as exc:
            self._count(endpoint, "error")
            raise UnavailableError(f"{endpoint}: {type(exc).__name__}") from exc
        self._count(endpoint, _status_class(status))
        if status >= 400:
            raise _error(endpoint, status, content, retry_after)
        if raw:
            return content
        if not content:
            return None
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            if method != "GET":
                return None  # recorded (2xx); an answer we cannot read changes nothing
            raise InvalidDataError(f"{endpoint}: the answer is not JSON") from exc

    # --- streams ------------------------------------------------------------

    @asynccontextmanager
    async def task_events(
        self, task_id: str, last_event_id: str | None
    ) -> AsyncIterator[EventStream]:
        """Open the task's event stream; the body is read by the caller."""
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        url = self._events_root + _path(Route.TASK_EVENTS, task_id=task_id)
        session = self._stream_session()
        try:
            async with self._connect_slots:
                response = await self._open_stream(session, url, headers)
        except TimeoutError as exc:
            self._count("task_events", "timeout")
            raise RequestTimeoutError("task_events: connect timed out") from exc
        except aiohttp.ClientError as exc:
            self._count("task_events", "error")
            raise UnavailableError(f"task_events: {type(exc).__name__}") from exc
        try:
            self._count("task_events", _status_class(response.status))
            if response.status >= 400:
                content = await _read_error_body(response)
                raise _error(
                    "task_events", response.status, content, response.headers.get("retry-after")
                )
            yield EventStream(response)
        finally:
            # A stream that ended cleanly gives its connection back to the pool;
            # one left mid-body is closed (its rest would be unread bytes).
            if response.content.is_eof():
                response.release()
            else:
                response.close()

    async def _open_stream(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """GET the stream, following redirects only within the same origin: the
        API key goes to the platform and nowhere else."""
        for _ in range(_MAX_REDIRECTS + 1):
            response = await session.get(
                url, headers=headers, proxy=self._stream_proxy, allow_redirects=False
            )
            if not _is_redirect(response.status):
                return response
            self._count("task_events", _status_class(response.status))
            try:
                url = _same_origin_target("task_events", url, response)
            finally:
                response.close()
        raise PlatformRejectedError(f"task_events: more than {_MAX_REDIRECTS} redirects")

    # --- helpers ------------------------------------------------------------

    def _count(self, endpoint: str, status_class: str) -> None:
        self._metrics.platform_requests(endpoint, status_class).inc()


async def _read_error_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.content.read(_MAX_ERROR_BODY * 4)
    except (TimeoutError, aiohttp.ClientError):
        return b""


def _path(route: str, **ids: str) -> str:
    try:
        return route_path(route, **ids)
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from exc


def _status_query(status: str | None) -> str:
    return "" if status is None else "?" + urllib.parse.urlencode({"status": status})


def _is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304


def _same_origin_target(endpoint: str, url: str, response: aiohttp.ClientResponse) -> str:
    """Where a redirect points, if it stays on the origin the key is meant for;
    a redirect elsewhere is refused (following it would hand over the API key)."""
    location = response.headers.get("location", "")
    target = urllib.parse.urljoin(url, location)
    if not location or _origin(target) != _origin(url):
        raise PlatformRejectedError(
            f"{endpoint}: redirect to another origin refused ({_origin(target) or 'none'}); "
            "the API key is only sent to the configured platform URL",
            status=response.status,
        )
    return target


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or default}" if parts.hostname else ""


async def _read_capped(response: aiohttp.ClientResponse, limit: int, endpoint: str) -> bytes:
    """The body, refused past ``limit`` bytes (never read further than that)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise InvalidDataError(f"{endpoint}: answer of {declared} bytes over {limit}")
    parts: list[bytes] = []
    size = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > limit:
            raise InvalidDataError(f"{endpoint}: answer over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _error(endpoint: str, status: int, content: bytes, retry_after: str | None) -> BridgeError:
    # The body is shown truncated: enough to diagnose, never a flood.
    text = content[:_MAX_ERROR_BODY].decode("utf-8", "replace").replace("\n", " ")
    return error_for_status(
        status,
        f"{endpoint}: HTTP {status} {text}".rstrip(),
        retry_after=parse_retry_after(retry_after),
    )


def _as_task(task: Any, what: str) -> dict[str, Any]:
    if not isinstance(task, dict):
        raise InvalidDataError(f"the {what} answer is not a JSON object")
    return task


def _as_list_of_objects(items: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise InvalidDataError(f"the {what} is not a JSON array")
    return [item for item in items if isinstance(item, dict)]
