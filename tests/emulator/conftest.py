"""Fixtures for the emulator's own tests: an emulator on a real port, an httpx
client that carries its API key, and a small SSE reader that keeps every field
(ids, retry, malformed data) because the tests are about exactly those."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings


@dataclass
class Frame:
    data: str
    id: str | None = None
    retry: int | None = None
    event: str | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.data)

    @property
    def type(self) -> str | None:
        try:
            value = orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return None
        return value.get("type") if isinstance(value, dict) else None


@dataclass
class StreamRead:
    frames: list[Frame] = field(default_factory=list)
    retry: int | None = None
    error: Exception | None = None  # how the stream ended, when not cleanly
    timed_out: bool = False

    @property
    def events(self) -> list[Frame]:
        """Frames that are task events (``connected`` and malformed ones excluded)."""
        return [f for f in self.frames if f.type not in (None, "connected") and f.id is not None]

    @property
    def types(self) -> list[str]:
        return [t for f in self.frames if (t := f.type) is not None]


async def read_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    max_frames: int | None = None,
    deadline_s: float = 5.0,
) -> StreamRead:
    """Read an SSE stream to its end (or ``max_frames``, or the deadline)."""
    out = StreamRead()

    async def consume() -> None:
        current: dict[str, Any] = {}
        data: list[str] = []
        async with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        out.frames.append(Frame(data="\n".join(data), **current))
                        if max_frames is not None and len(out.frames) >= max_frames:
                            return
                    elif "retry" in current:
                        out.retry = current["retry"]
                    current, data = {}, []
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "id":
                    current["id"] = value
                elif name == "retry":
                    current["retry"] = int(value)
                    out.retry = int(value)
                elif name == "event":
                    current["event"] = value

    try:
        await asyncio.wait_for(consume(), deadline_s)
    except TimeoutError:
        out.timed_out = True
    except httpx.HTTPError as exc:
        out.error = exc
    return out


@pytest.fixture
def settings() -> EmulatorSettings:
    """Fast tasks: a test that wants other knobs builds its own settings."""
    s = EmulatorSettings()
    s.tasks.event_interval_s = 0.002
    s.tasks.events_per_task = 12
    return s


@pytest.fixture
async def emu(settings: EmulatorSettings) -> AsyncIterator[Emulator]:
    async with Emulator(settings) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=emu.base_url, headers={"x-api-key": emu.api_key}, timeout=5.0
    ) as c:
        yield c


@asynccontextmanager
async def running(settings: EmulatorSettings) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    """An emulator with these settings and a client bound to it (key included)."""
    async with (
        Emulator(settings) as emulator,
        httpx.AsyncClient(
            base_url=emulator.base_url, headers={"x-api-key": emulator.api_key}, timeout=5.0
        ) as c,
    ):
        yield emulator, c
