"""Many replicas on Kafka alone: task ownership through a consumer group on the
coordination topic, and per-task checkpoints in a compacted topic."""
