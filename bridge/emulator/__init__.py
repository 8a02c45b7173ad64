"""An emulator of the xpander.ai task API: REST and event streams on one port,
with a lifecycle engine, stream-semantics knobs, fault injection and an
inspection surface. See ``server.Emulator`` and ``settings.EmulatorSettings``."""

from __future__ import annotations

from bridge.emulator.control import Control, CreateTaskControl
from bridge.emulator.scenarios import PRESETS, preset
from bridge.emulator.server import Emulator
from bridge.emulator.settings import (
    EmulatorSettings,
    FaultSettings,
    HttpFaultRule,
    ScenarioSettings,
    StreamSettings,
    TaskProfile,
)
from bridge.emulator.tasks import EmittedEvent

__all__ = [
    "PRESETS",
    "Control",
    "CreateTaskControl",
    "EmittedEvent",
    "Emulator",
    "EmulatorSettings",
    "FaultSettings",
    "HttpFaultRule",
    "ScenarioSettings",
    "StreamSettings",
    "TaskProfile",
    "preset",
]
