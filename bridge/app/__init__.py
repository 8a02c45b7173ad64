"""The daemon assembled (``Bridge``): the one place that wires sources,
transforms and sinks together."""

from __future__ import annotations

from bridge.app.daemon import Bridge, ShutdownReport

__all__ = ["Bridge", "ShutdownReport"]
