"""Reading loosely typed values from the platform's JSON."""

from __future__ import annotations

from typing import Any

__all__ = ["str_or_none"]


def str_or_none(value: Any) -> str | None:
    """``value`` when it is a string, else ``None`` (the platform's JSON is untrusted)."""
    return value if isinstance(value, str) else None
