"""An emulator of the xpander.ai task API: REST and event streams on one port,
with a lifecycle engine, stream-semantics knobs, fault injection and an
inspection surface. See ``server.Emulator`` and ``settings.EmulatorSettings``."""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it. Imported on first use, so that
#: ``xpander-bridge run`` (whose CLI also describes the emulator command) does
#: not pay for the emulator's import.
_EXPORTS = {
    "PRESETS": "scenarios",
    "preset": "scenarios",
    "Control": "control",
    "CreateTaskControl": "control",
    "Emulator": "server",
    "EmulatorSettings": "settings",
    "FaultSettings": "settings",
    "HttpFaultRule": "settings",
    "ScenarioSettings": "settings",
    "StreamSettings": "settings",
    "TaskProfile": "settings",
    "EmittedEvent": "tasks",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


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
