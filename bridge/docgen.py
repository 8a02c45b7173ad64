"""Regenerate every file derived from the code: ``python -m bridge.docgen``.

``config.example.yaml``, the README's environment table and the JSON Schemas
under ``schemas/``. Tests compare each file with what this writes, so a change
to a model that forgets to regenerate fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from pydantic import BaseModel

from bridge.config_doc import render_env_table, render_example
from bridge.envelope import ActivityEnvelope, Envelope, TaskSnapshot, ToolCallData, TruncatedData
from bridge.transforms.commands import CommandResult, CreateCommand, StopCommand, UpdateCommand
from bridge.transforms.reports import ExternalTaskReport, MetricsReport

__all__ = ["SCHEMAS", "render_readme", "render_schema", "write_all"]

#: schema file name -> the model it documents
SCHEMAS: dict[str, type[BaseModel]] = {
    "envelope.v1.json": Envelope,
    "activity.v1.json": ActivityEnvelope,
    "task-snapshot.v1.json": TaskSnapshot,
    "tool-call-data.v1.json": ToolCallData,
    "truncated-data.v1.json": TruncatedData,
    "task-report.v1.json": ExternalTaskReport,
    "metrics-report.v1.json": MetricsReport,
    "command-create.v1.json": CreateCommand,
    "command-update.v1.json": UpdateCommand,
    "command-stop.v1.json": StopCommand,
    "command-result.v1.json": CommandResult,
}

_TABLE_START = "| variable | setting | description |"
_TABLE_END = "\n\n## "


def render_schema(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def render_readme(readme: str) -> str:
    start = readme.index(_TABLE_START)
    end = readme.index(_TABLE_END, start)
    return readme[:start] + render_env_table() + readme[end:]


def write_all(root: Path) -> list[Path]:
    written = [root / "config.example.yaml", root / "README.md"]
    written[0].write_text(render_example())
    written[1].write_text(render_readme(written[1].read_text()))
    (root / "schemas").mkdir(exist_ok=True)
    for name, model in SCHEMAS.items():
        path = root / "schemas" / name
        path.write_text(render_schema(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
