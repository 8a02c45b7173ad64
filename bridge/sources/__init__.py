"""Sources: where events come from (platform task streams, Kafka report topics)."""
