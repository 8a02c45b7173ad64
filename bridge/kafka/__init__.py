"""Kafka, at one boundary: client options, error translation, topics, consumer
groups (librdkafka, through confluent-kafka), and an embedded broker for the demo and the tests."""

from __future__ import annotations
