"""The xpander API client the bridge uses: one shared ``httpx.AsyncClient`` for
every REST call and every event stream, and the one place where httpx errors
and HTTP statuses become ``bridge.errors``.

It never retries: a failed call raises a typed error and the caller's runner
decides (back off, drop, halt). Each call is counted by endpoint and status
class, never by URL, so the label set stays bounded.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from bridge import __version__
from bridge.config import PlatformConfig, StreamsConfig
from bridge.errors import (
    BridgeError,
    InvalidDataError,
    RequestTimeoutError,
    UnavailableError,
    error_for_status,
)
from bridge.observability.metrics import Metrics
from bridge.platform.wire import API_KEY_HEADER, Route, events_root

__all__ = ["PlatformClient", "parse_retry_after"]

_MAX_ERROR_BODY = 300
#: streams per HTTP connection pool (see PlatformClient.__init__)
_STREAMS_PER_POOL = 128


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


class PlatformClient:
    """Async context manager; ``aclose()`` is safe to call twice."""

    def __init__(
        self,
        platform: PlatformConfig,
        streams: StreamsConfig,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if platform.api_key is None or not platform.organization_id:
            raise ValueError("the platform client needs an API key and an organization id")
        self._metrics = metrics
        self._base = platform.base_url.rstrip("/")
        self._events_root = events_root(platform.events_base, platform.organization_id)
        self._stream_timeout = httpx.Timeout(
            connect=platform.connect_timeout_s,
            read=streams.idle_timeout_s,  # no bytes for this long: httpx raises ReadTimeout
            write=platform.request_timeout_s,
            pool=None,  # admission is bounded by the stream semaphore, not the pool
        )
        headers = {
            API_KEY_HEADER: platform.api_key.get_secret_value(),
            "user-agent": f"xpander-bridge/{__version__}",
        }
        # httpcore scans every connection of a pool, and every request queued in
        # it, on each request and each response close: a pool of n streams costs
        # O(n) per stream opened or closed, O(n^2) in all (measured: 70% of the
        # CPU at 10,000 streams). So REST calls have their own pool, entered
        # through a semaphore so that httpcore's queue stays empty, and streams
        # are spread over pools of at most _STREAMS_PER_POOL connections, made on
        # first use and sharing one TLS context. Streams are admitted below
        # max_concurrent by the supervisor's semaphore, so no pool makes one wait.
        self._headers = headers
        self._transport = transport
        self._verify: ssl.SSLContext | None = None
        pools = max(1, -(-streams.max_concurrent // _STREAMS_PER_POOL))
        self._stream_pools: list[httpx.AsyncClient | None] = [None] * pools
        self._pool_streams = [0] * pools  # open streams per pool
        self._rest_slots = asyncio.Semaphore(platform.rest_connections)
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(platform.request_timeout_s, connect=platform.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=platform.rest_connections,
                max_keepalive_connections=platform.rest_connections,
            ),
            transport=transport,
        )
        self._closed = False

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._http.aclose()
            for pool in self._stream_pools:
                if pool is not None:
                    await pool.aclose()

    # --- REST ---------------------------------------------------------------

    async def list_agent_tasks(self, agent_id: str) -> list[dict[str, Any]]:
        items = await self._request(
            "GET", Route.LIST_TASKS.format(agent_id=agent_id), endpoint="list_tasks"
        )
        return _as_list_of_objects(items, "task list")

    async def list_user_tasks(self, user_id: str) -> list[dict[str, Any]]:
        items = await self._request(
            "GET", Route.LIST_USER_TASKS.format(user_id=user_id), endpoint="list_user_tasks"
        )
        return _as_list_of_objects(items, "user task list")

    async def get_task(self, task_id: str) -> dict[str, Any]:
        task = await self._request(
            "GET", Route.GET_TASK.format(task_id=task_id), endpoint="get_task"
        )
        if not isinstance(task, dict):
            raise InvalidDataError("the task status answer is not a JSON object")
        return task

    async def report_task(self, agent_id: str, body: bytes) -> Any:
        return await self._request(
            "POST", Route.REPORT_TASK.format(agent_id=agent_id), endpoint="report_task", body=body
        )

    async def report_metrics(self, agent_id: str, body: bytes) -> Any:
        return await self._request(
            "POST",
            Route.REPORT_METRICS.format(agent_id=agent_id),
            endpoint="report_metrics",
            body=body,
        )

    async def _request(
        self, method: str, path: str, *, endpoint: str, body: bytes | None = None
    ) -> Any:
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            async with self._rest_slots:
                response = await self._http.request(
                    method, self._base + path, content=body, headers=headers
                )
        except httpx.TimeoutException as exc:
            self._count(endpoint, "timeout")
            raise RequestTimeoutError(f"{endpoint}: timed out") from exc
        except httpx.TransportError as exc:
            self._count(endpoint, "error")
            raise UnavailableError(f"{endpoint}: {type(exc).__name__}") from exc
        self._count(endpoint, _status_class(response.status_code))
        if response.status_code >= 400:
            raise self._error(endpoint, response)
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            if method != "GET":
                return None  # recorded (2xx); an answer we cannot read changes nothing
            raise InvalidDataError(f"{endpoint}: the answer is not JSON") from exc

    # --- streams ------------------------------------------------------------

    @asynccontextmanager
    async def task_events(
        self, task_id: str, last_event_id: str | None
    ) -> AsyncIterator[httpx.Response]:
        """Open the task's event stream; the body is read by the caller."""
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        url = self._events_root + Route.TASK_EVENTS.format(task_id=task_id)
        index = self._pick_stream_pool()
        self._pool_streams[index] += 1
        try:
            async with self._open_stream(self._stream_pool(index), url, headers) as response:
                yield response
        finally:
            self._pool_streams[index] -= 1

    @asynccontextmanager
    async def _open_stream(
        self, pool: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        request = pool.build_request("GET", url, headers=headers)
        try:
            response = await pool.send(request, stream=True)
        except httpx.TimeoutException as exc:
            self._count("task_events", "timeout")
            raise RequestTimeoutError("task_events: connect timed out") from exc
        except httpx.TransportError as exc:
            self._count("task_events", "error")
            raise UnavailableError(f"task_events: {type(exc).__name__}") from exc
        try:
            self._count("task_events", _status_class(response.status_code))
            if response.status_code >= 400:
                await response.aread()
                raise self._error("task_events", response)
            yield response
        finally:
            await response.aclose()

    def _pick_stream_pool(self) -> int:
        """The first pool with room, else the least loaded: few streams, few pools."""
        loads = self._pool_streams
        for index, load in enumerate(loads):
            if load < _STREAMS_PER_POOL:
                return index
        return loads.index(min(loads))

    def _stream_pool(self, index: int) -> httpx.AsyncClient:
        """Pool ``index``, made on first use."""
        pool = self._stream_pools[index]
        if pool is None:
            if self._verify is None and self._transport is None:
                self._verify = httpx.create_ssl_context()
            pool = self._stream_pools[index] = httpx.AsyncClient(
                headers=self._headers,
                timeout=self._stream_timeout,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=8),
                transport=self._transport,
                verify=self._verify or True,
            )
        return pool

    # --- helpers ------------------------------------------------------------

    def _count(self, endpoint: str, status_class: str) -> None:
        self._metrics.platform_requests.labels(endpoint, status_class).inc()

    @staticmethod
    def _error(endpoint: str, response: httpx.Response) -> BridgeError:
        # The body is shown truncated: enough to diagnose, never a flood.
        text = response.text[:_MAX_ERROR_BODY].replace("\n", " ")
        return error_for_status(
            response.status_code,
            f"{endpoint}: HTTP {response.status_code} {text}".rstrip(),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


def _as_list_of_objects(items: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise InvalidDataError(f"the {what} is not a JSON array")
    return [item for item in items if isinstance(item, dict)]
