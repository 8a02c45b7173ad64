"""The Kafka sink: the producer, topic set-up, dead-letter records."""
