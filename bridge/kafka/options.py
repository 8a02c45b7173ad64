"""Connection options shared by every Kafka client the bridge makes (producer,
consumers, admin): one place reads ``KafkaConfig``'s security settings."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from bridge.config import KafkaConfig
from bridge.core.retry import RetryPolicy

__all__ = ["KAFKA_RETRY", "client_options"]

#: Kafka away (connect, group join, fetch, checkpoint load): retried without
#: end, backing off to 15 s. One curve for every client the bridge makes.
KAFKA_RETRY = RetryPolicy(0.5, 15.0)


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Bootstrap servers, client id, timeouts, TLS and SASL, as aiokafka takes them."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": config.request_timeout_ms,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(config)
    if config.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        if config.sasl_password is not None:
            options["sasl_plain_password"] = config.sasl_password.get_secret_value()
    return options


def _ssl_context(config: KafkaConfig) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(config.ssl_cafile) if config.ssl_cafile else None,
        certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )
    return context
