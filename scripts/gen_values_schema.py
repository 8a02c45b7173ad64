"""Write the bridge's config model into the Helm chart's values.schema.json.

The chart's ``config`` value is the bridge's YAML config file, so its schema is
the one ``bridge.config.BridgeConfig`` describes: generated here, never edited
by hand. Only the ``definitions`` of values.schema.json are replaced; the rest
of the file (the chart's own values) is hand-written.

Two changes from the model's own JSON schema:

* secret fields (``platform.api_key``, ``kafka.sasl_password``) are removed:
  the loader refuses them in a file, and the chart passes them through a
  Secret; with ``additionalProperties: false`` helm now refuses them too;
* ``title`` (noise in helm's error messages) and ``format: path`` (not a JSON
  Schema format) are dropped, and ``$defs`` becomes draft-07 ``definitions``.

Run: .venv/bin/python scripts/gen_values_schema.py (tests/deploy checks it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "charts/xpander-bridge/values.schema.json"


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" or (key == "format" and value == "path"):
                continue
            if key == "$ref" and isinstance(value, str):
                out[key] = value.replace("#/$defs/", "#/definitions/")
            else:
                out[key] = _clean(value)
        return out
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def _is_secret(field_schema: dict[str, Any]) -> bool:
    branches = field_schema.get("anyOf", [field_schema])
    return any(branch.get("writeOnly") for branch in branches)


def config_definitions() -> dict[str, Any]:
    """The config model as draft-07 definitions, the root named BridgeConfig."""
    from bridge.config import BridgeConfig

    schema = BridgeConfig.model_json_schema()
    definitions: dict[str, Any] = dict(schema.pop("$defs"))
    definitions["BridgeConfig"] = schema
    for definition in definitions.values():
        properties = definition.get("properties", {})
        for name in [n for n, field in properties.items() if _is_secret(field)]:
            del properties[name]
    cleaned: dict[str, Any] = _clean(definitions)
    return dict(sorted(cleaned.items()))


def render(values_schema: dict[str, Any]) -> dict[str, Any]:
    """values.schema.json with its definitions regenerated from the model."""
    return {**values_schema, "definitions": config_definitions()}


def dumps(values_schema: dict[str, Any]) -> str:
    return json.dumps(values_schema, indent=2) + "\n"


def main() -> int:
    current = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    SCHEMA_PATH.write_text(dumps(render(current)), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
