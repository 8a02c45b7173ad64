"""The official client (``xpander-sdk``, unchanged) against the emulator on a real
port. Always an explicit ``Configuration``: the SDK keeps module-level singletons
that would otherwise read the environment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from xpander_sdk import Configuration, Tasks

from bridge.emulator.server import Emulator
from bridge.emulator.settings import EmulatorSettings, TaskProfile


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    settings = EmulatorSettings()
    settings.tasks = TaskProfile(
        event_interval_s=0.003, events_per_task=25, fail_share=0.0, error_share=0.0, stop_share=0.0
    )
    async with Emulator(settings) as emulator:
        yield emulator


@pytest.fixture
def configuration(emu: Emulator) -> Configuration:
    return Configuration(
        base_url=emu.base_url, api_key=emu.api_key, organization_id=emu.organization_id
    )


@pytest.fixture
def tasks(configuration: Configuration) -> Tasks:
    return Tasks(configuration=configuration)
