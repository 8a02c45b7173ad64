"""Sinks: where records go (Kafka topics, the platform's report endpoints)."""
