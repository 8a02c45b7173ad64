"""Kafka: the sink and source the bridge talks to, and an embedded broker for the demo and tests."""

from __future__ import annotations
