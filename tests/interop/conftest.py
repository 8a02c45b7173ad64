"""One bridge run for the whole package (``published``), and kcat."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy.helpers import require_tool
from support.kafka import KafkaService

from interop.helpers import Published, publish


@pytest.fixture(scope="package")
def published(kafka: KafkaService) -> Published:
    return publish(kafka)


@pytest.fixture(scope="session")
def kcat() -> Path:
    return require_tool("kcat")
