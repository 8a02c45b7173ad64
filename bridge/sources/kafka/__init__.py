"""The Kafka-to-platform source: report and metrics topics, consumed in a group."""
