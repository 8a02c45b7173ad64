"""Fixtures of the platform source's unit tests: the rig of
``support.platform_source`` (the emulator on a real port, a real client, the
real normalizer, a publish that acknowledges what it gets) with fast tasks.
A test that needs other emulator or context settings opens its own with
``open_rig(...)``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.platform_source import Rig, open_rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with open_rig() as opened:
        yield opened
