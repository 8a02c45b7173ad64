"""The platform-to-Kafka source: discovery, one SSE stream per task, polling."""
