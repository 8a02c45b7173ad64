"""``KafkaConfig`` as librdkafka (confluent-kafka) configuration: the one place
that maps the bridge's setting names to librdkafka's, so users keep the names
they already set (``kafka.linger_ms`` is ``linger.ms``, ``kafka.max_request_bytes``
is ``message.max.bytes``, and so on).

librdkafka's own log lines go through the ``bridge.kafka.librdkafka`` logger
(one JSON line each, like every other), not to stderr.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.config import KafkaConfig

__all__ = ["RDKAFKA_LOGGER", "client_config", "consumer_config", "producer_config"]

#: librdkafka's log lines, as JSON lines through the bridge's logging
RDKAFKA_LOGGER = logging.getLogger("bridge.kafka.librdkafka")

#: Java's default partitioner (murmur2 of the key): records of a task land in
#: the partition they did under aiokafka (before 2026-12) and under any Java
#: producer (``bridge.coordination.partitioning`` computes the same).
_PARTITIONER = "murmur2_random"


def client_config(config: KafkaConfig, *, client_id: str | None = None) -> dict[str, Any]:
    """Bootstrap servers, client id, socket timeout, TLS and SASL: what every client needs."""
    options: dict[str, Any] = {
        "bootstrap.servers": ",".join(config.bootstrap_servers),
        "client.id": client_id or config.client_id,
        "security.protocol": config.security_protocol.lower(),
        "socket.timeout.ms": config.request_timeout_ms,
        "logger": RDKAFKA_LOGGER,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        if config.ssl_cafile is not None:
            options["ssl.ca.location"] = str(config.ssl_cafile)
        if config.ssl_certfile is not None:
            options["ssl.certificate.location"] = str(config.ssl_certfile)
        if config.ssl_keyfile is not None:
            options["ssl.key.location"] = str(config.ssl_keyfile)
    if config.security_protocol.startswith("SASL"):
        options["sasl.mechanism"] = config.sasl_mechanism
        if config.sasl_username is not None:
            options["sasl.username"] = config.sasl_username
        if config.sasl_password is not None:
            options["sasl.password"] = config.sasl_password.get_secret_value()
    return options


def producer_config(
    config: KafkaConfig,
    *,
    transactional_id: str | None = None,
    transaction_timeout_ms: int | None = None,
) -> dict[str, Any]:
    """The producer: acks, idempotence, batching, size limits; transactional when
    given an id (which implies idempotence)."""
    options = client_config(config)
    options.update(
        {
            "acks": "all" if config.acks == "all" else int(config.acks),
            "enable.idempotence": config.enable_idempotence or transactional_id is not None,
            "compression.type": config.compression_type,
            "linger.ms": config.linger_ms,
            "batch.size": min(config.max_batch_bytes, config.max_request_bytes),
            # librdkafka's request size cap; a record over it fails with
            # MSG_SIZE_TOO_LARGE before it is sent (the delivery loop's oversized path)
            "message.max.bytes": config.max_request_bytes,
            "request.timeout.ms": config.request_timeout_ms,
            "partitioner": _PARTITIONER,
        }
    )
    if transactional_id is not None:
        options["transactional.id"] = transactional_id
        # A transaction's commit says every record of it was written: only the
        # failures need a report (``AsyncProducer.produce_quiet``; librdkafka
        # then calls back for failures alone, and the Python binding skips the
        # callback for a success without leaking its state).
        options["delivery.report.only.error"] = True
        if transaction_timeout_ms is not None:
            options["transaction.timeout.ms"] = transaction_timeout_ms
            # librdkafka insists: a request may not outlive the transaction it is in
            options["socket.timeout.ms"] = min(options["socket.timeout.ms"], transaction_timeout_ms)
    return options


def consumer_config(
    config: KafkaConfig,
    *,
    group_id: str | None = None,
    client_id: str | None = None,
    read_committed: bool = True,
    offset_reset: str = "earliest",
) -> dict[str, Any]:
    """A consumer; a group member when given a group id. Offsets are never
    committed automatically: the bridge commits an offset only once what the
    message led to was acknowledged (or in the same transaction as it)."""
    options = client_config(config, client_id=client_id)
    options.update(
        {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": offset_reset,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            # a group id is mandatory for librdkafka even when assigning by hand
            "group.id": group_id or f"{config.client_id}-unused",
        }
    )
    return options
