"""Documentation generated from the config models, so it cannot drift from them:
``config.example.yaml`` (every option, its default and its description) and the
README's table of environment variables. A test compares both with the files."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from bridge.config import _SECRET_PATHS, ENV_ALIASES, ENV_NESTING, ENV_PREFIX, BridgeConfig

__all__ = ["render_env_table", "render_example"]

_HEADER = """\
# xpander-bridge configuration: every option, with its default.
# Generated from bridge/config.py (`xpander-bridge check-config --print-example`).
# Any field can be set from the environment as XPANDER_BRIDGE_<SECTION>__<FIELD>;
# secrets come only from the environment or from files, never from this file.
"""


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    text = str(value)
    return orjson.dumps(text).decode()


def _env_names(section: str, field: str) -> list[str]:
    names = [name for name, path in ENV_ALIASES.items() if path == (section, field)]
    names.append(f"{ENV_PREFIX}{section.upper()}{ENV_NESTING}{field.upper()}")
    return names


def _section_fields(section: str) -> dict[str, FieldInfo]:
    model = BridgeConfig.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return dict(model.model_fields)


def render_example() -> str:
    """``config.example.yaml``: each section, each field commented."""
    defaults = BridgeConfig()
    lines = [_HEADER]
    for section, section_field in BridgeConfig.model_fields.items():
        model = section_field.annotation
        doc = (getattr(model, "__doc__", None) or "").strip().splitlines()[0]
        lines.append(f"# {doc}")
        lines.append(f"{section}:")
        current = getattr(defaults, section)
        for name, info in _section_fields(section).items():
            value = getattr(current, name)
            secret = (section, name) in _SECRET_PATHS
            lines.append(f"  # {info.description}")
            if secret:
                env = " or ".join(n for n in _env_names(section, name)[:1])
                lines.append(f"  # {name}: (secret: set {env} or {name}_file)")
                continue
            if isinstance(value, SecretStr):
                continue
            if isinstance(value, list) and value and isinstance(value[0], BaseModel):
                value = [item.model_dump(mode="json") for item in value]
            rendered = _yaml_scalar(value.value if hasattr(value, "value") else value)
            lines.append(f"  {name}: {rendered}")
        lines.append("")
    lines.append(
        "# Routing example (topics.routes), first match wins:\n"
        "#   routes:\n"
        '#     - {types: ["chunk"], topic: "xpander.task.chunks"}\n'
        '#     - {types: ["context_status"], drop: true}\n'
    )
    return "\n".join(lines)


def render_env_table() -> str:
    """A Markdown table of every environment variable and what it sets."""
    rows = ["| variable | setting | description |", "|---|---|---|"]
    for section in BridgeConfig.model_fields:
        for name, info in _section_fields(section).items():
            names = _env_names(section, name)
            if (section, name) in _SECRET_PATHS:
                names.insert(len(names) - 1, f"{names[0]}_FILE")
            shown = "<br>".join(f"`{n}`" for n in names)
            rows.append(f"| {shown} | `{section}.{name}` | {info.description} |")
    return "\n".join(rows)
