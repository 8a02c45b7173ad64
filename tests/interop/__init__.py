"""Interop: software we did not write (the CloudEvents SDK, kcat, aiokafka and
confluent-kafka consumers as docs/CONSUMING.md writes them) reads what the
bridge wrote to a real broker."""
