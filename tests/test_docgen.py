"""Files derived from the code are up to date (`python -m bridge.docgen`)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest

from bridge.docgen import SCHEMAS, render_readme, render_schema

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_matches_the_model(name: str) -> None:
    assert (ROOT / "schemas" / name).read_text() == render_schema(SCHEMAS[name])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_is_a_valid_json_schema(name: str) -> None:
    schema = orjson.loads((ROOT / "schemas" / name).read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render_readme(readme) == readme
