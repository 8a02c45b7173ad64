"""The platform client against a platform that misbehaves: ids that look like
paths, redirects to another origin, answers too large to hold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from bridge.config import PlatformConfig, StreamsConfig
from bridge.errors import InvalidDataError, PlatformRejectedError
from bridge.observability.metrics import Metrics
from bridge.platform.client import PlatformClient

pytestmark = pytest.mark.timeout(30)

KEY = "secret-key-0123456789"


@dataclass
class Recorder:
    """A real HTTP server that records what reaches it and answers as told."""

    url: str = ""
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    answer: Callable[[web.Request], web.StreamResponse] = lambda _: web.json_response([])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.raw_path, dict(request.headers)))
        return self.answer(request)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Recorder, Recorder]]:
    """Two servers on two ports: the platform, and a stranger."""
    recorders = (Recorder(), Recorder())
    runners = []
    for recorder in recorders:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorder.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        recorder.url = f"http://127.0.0.1:{port}"
        runners.append(runner)
    try:
        yield recorders
    finally:
        for runner in runners:
            await runner.cleanup()


def client(base: str, **platform: object) -> PlatformClient:
    config = PlatformConfig(base_url=base, api_key=KEY, organization_id="org", **platform)
    return PlatformClient(config, StreamsConfig(), Metrics())


@pytest.mark.parametrize(
    "hostile",
    ["../../agents/x/delete?confirm=1", "a/b", "a#b", "%2e%2e", "a b", "ä/..", "?", "..a"],
)
async def test_an_id_is_one_path_segment_whatever_it_holds(
    servers: tuple[Recorder, Recorder], hostile: str
) -> None:
    platform, _ = servers
    async with client(platform.url) as api:
        await api.list_agent_tasks(hostile)
        await api.report_task(hostile, b"{}")
    prefix = "/agent-execution/executions/history/"
    (listing, _), (report, _) = platform.seen
    assert listing.startswith(prefix) and "/" not in listing[len(prefix) :]
    assert "?" not in listing and "#" not in listing
    assert report.startswith("/agent-execution/") and report.endswith("/report_task")
    assert report.count("/") == 3


@pytest.mark.parametrize("dots", ["", ".", "..", "...."])
async def test_an_id_that_a_url_would_resolve_away_is_refused(
    servers: tuple[Recorder, Recorder], dots: str
) -> None:
    platform, _ = servers
    async with client(platform.url) as api:
        with pytest.raises(InvalidDataError, match="path segment"):
            await api.get_task(dots)
        with pytest.raises(InvalidDataError, match="path segment"):
            async with api.task_events(dots, None):
                pass
    assert platform.seen == []


async def test_a_redirect_to_another_origin_never_gets_the_key(
    servers: tuple[Recorder, Recorder],
) -> None:
    platform, stranger = servers
    platform.answer = lambda request: web.Response(
        status=307, headers={"location": stranger.url + request.raw_path}
    )
    async with client(platform.url) as api:
        with pytest.raises(PlatformRejectedError, match="another origin"):
            async with api.task_events("t-1", None):
                pass
        with pytest.raises(PlatformRejectedError, match="another origin"):
            await api.list_agent_tasks("a-1")
        with pytest.raises(PlatformRejectedError, match="another origin"):
            await api.report_task("a-1", b"{}")
    assert stranger.seen == []  # nothing reached the other origin at all
    assert len(platform.seen) == 3


async def test_a_redirect_within_the_origin_is_followed(
    servers: tuple[Recorder, Recorder],
) -> None:
    platform, _ = servers

    def answer(request: web.Request) -> web.StreamResponse:
        if request.raw_path.startswith("/moved"):
            return web.json_response([{"id": "t-1"}])
        return web.Response(status=308, headers={"location": "/moved" + request.raw_path})

    platform.answer = answer
    async with client(platform.url) as api:
        assert await api.list_agent_tasks("a-1") == [{"id": "t-1"}]
    assert [headers.get("x-api-key") for _, headers in platform.seen] == [KEY, KEY]


async def test_an_answer_past_the_size_limit_is_refused_unread(
    servers: tuple[Recorder, Recorder],
) -> None:
    platform, _ = servers
    body = b"[" + b",".join([b'{"id":"%d"}' % i for i in range(200_000)]) + b"]"
    platform.answer = lambda _: web.Response(body=body, content_type="application/json")
    async with client(platform.url, max_response_bytes=1_000_000) as api:
        with pytest.raises(InvalidDataError, match="over 1000000"):
            await api.list_agent_tasks("a-1")
    async with client(platform.url, max_response_bytes=len(body)) as api:
        assert len(await api.list_agent_tasks("a-1")) == 200_000
