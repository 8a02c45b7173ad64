"""Fixtures shared by the whole suite.

Kafka (logic in ``tests/support/kafka.py``):

- ``kafka`` (session): a :class:`~support.kafka.KafkaService`, the broker
  every Kafka test shares: ``KAFKA_BOOTSTRAP_SERVERS``, else Apache Kafka via
  testcontainers when Docker answers, else the embedded tansu broker.
- ``@pytest.mark.requires_kafka("idempotence", ...)``: skip, with the reason,
  unless ``kafka`` has every named capability (``support.kafka.CAPABILITIES``).
- ``apache_kafka``: ``kafka``, or a skip when it is not Apache Kafka.
- ``topic`` / ``new_topic``: topic names unique to the test.
- ``kafka_outage``: a private embedded broker reachable only through a
  :class:`~support.tcp_proxy.TcpProxy`, to take "the broker" away and bring it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from support.kafka import KafkaOutage, KafkaService, kafka_service, topic_name
from support.platform_source import Rig, open_rig
from support.tcp_proxy import TcpProxy

from bridge.kafka.embedded import EmbeddedBroker


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_kafka(*capabilities): skip unless the session's Kafka has these capabilities "
        "(see tests/support/kafka.py CAPABILITIES)",
    )


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaService]:
    with kafka_service() as service:
        yield service


@pytest.fixture(autouse=True)
def _skip_without_kafka_capabilities(request: pytest.FixtureRequest) -> None:
    # Only tests that carry the marker start a broker for the check.
    marker = request.node.get_closest_marker("requires_kafka")
    if marker is None:
        return
    service: KafkaService = request.getfixturevalue("kafka")
    for capability in marker.args:
        reason = service.lacks(capability)
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def apache_kafka(kafka: KafkaService) -> KafkaService:
    reason = kafka.lacks("apache_kafka")
    if reason is not None:
        pytest.skip(reason)
    return kafka


@pytest.fixture
def new_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``new_topic("events")`` -> a name unique to this test, readable in broker logs."""
    test_name = request.node.name

    def make(suffix: str = "") -> str:
        return topic_name(f"{test_name}-{suffix}" if suffix else test_name)

    return make


@pytest.fixture
def topic(new_topic: Callable[[str], str]) -> str:
    """One topic name unique to this test (not created: see ``support.kafka.create_topics``)."""
    return new_topic("")


@pytest.fixture
async def kafka_outage() -> AsyncIterator[KafkaOutage]:
    # The proxy's port must exist before the broker starts, because the broker
    # advertises it; the broker's own port is given to the proxy afterwards.
    async with TcpProxy() as proxy, EmbeddedBroker(advertised_port=proxy.port) as broker:
        proxy.upstream = (broker.host, broker.port)
        yield KafkaOutage(bootstrap_servers=proxy.address, proxy=proxy)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """The platform source's unit-test rig (``support.platform_source``): the
    emulator on a real port, a real client, the real normalizer, a publish that
    acknowledges what it gets. A test that needs other settings opens its own
    with ``open_rig(...)``."""
    async with open_rig() as opened:
        yield opened
