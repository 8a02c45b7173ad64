"""One bridge run for the whole package (``published``), and kcat."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.kafka import KafkaService

from interop.helpers import Published, publish, require_tool


@pytest.fixture(scope="package")
def published(kafka: KafkaService) -> Published:
    return publish(kafka)


@pytest.fixture(scope="session")
def kcat() -> Path:
    return require_tool("kcat", "KCAT_BIN")
