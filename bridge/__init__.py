"""xpander-bridge: xpander.ai task activity into Kafka, and external runs back onto the platform."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
