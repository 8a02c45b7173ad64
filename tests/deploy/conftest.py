"""Fixtures of the deployment tests: the tools, and the chart rendered once."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.helpers import FULL_VALUES, Manifest, render, require_tool


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_tool("helm")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return require_tool("hadolint")


@pytest.fixture(scope="session")
def default_manifests(helm: Path) -> list[Manifest]:
    """The chart with its default values."""
    return render(helm)


@pytest.fixture(scope="session")
def full_manifests(helm: Path) -> list[Manifest]:
    """The chart with every option on (charts/xpander-bridge/ci/full-values.yaml)."""
    return render(helm, [FULL_VALUES])
