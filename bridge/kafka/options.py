"""The retry curve of every Kafka client the bridge makes (their settings are
``bridge.kafka.rdkafka``)."""

from __future__ import annotations

from bridge.core.retry import RetryPolicy

__all__ = ["KAFKA_RETRY"]

#: Kafka away (connect, group join, fetch, checkpoint load): retried without
#: end, backing off to 15 s. One curve for every client the bridge makes.
KAFKA_RETRY = RetryPolicy(0.5, 15.0)
