"""The typed reader (``bridge.envelope.read_envelope``) on what the bridge
wrote to the broker, headers as the broker returned them."""

from __future__ import annotations

import orjson
import pytest
from support.kafka import OutRecord, consume, create_topics, produce, topic_name

from bridge.envelope import SCHEMA_VERSION, InvalidEnvelope, UnsupportedSchemaVersion, read_envelope
from interop.helpers import Published

pytestmark = pytest.mark.timeout(120)


def test_every_record_of_both_topics_is_read(published: Published) -> None:
    for record in [*published.events, *published.state]:
        envelope = read_envelope(record.required_value(), record.headers)
        assert record.key == envelope.task_id.encode()
        assert envelope.schema_version == SCHEMA_VERSION
    read = [read_envelope(r.required_value(), r.headers) for r in published.events]
    assert {e.task_id for e in read} == set(published.statuses)
    assert len({e.event_id for e in read}) == len(read), "no duplicate on a clean run"


async def test_a_record_from_another_major_is_refused_clearly(published: Published) -> None:
    """A real record, its schema_version made 2.0 (and one made 1.9 with a new
    field), through the broker: 2.0 is refused with the dedicated error, 1.9 read."""
    original = published.events[-1]
    body = orjson.loads(original.required_value())
    future_major = orjson.dumps({**body, "schema_version": "2.0"})
    future_minor = orjson.dumps({**body, "schema_version": "1.9", "replica": "r-1"})
    topic = topic_name("interop-versions")
    kafka = published.kafka
    await create_topics(kafka.bootstrap_servers, topic)
    await produce(
        kafka.bootstrap_servers,
        topic,
        [
            OutRecord(value=v, key=original.key, headers=original.headers)
            for v in (future_major, future_minor)
        ],
    )
    major, minor = await consume(kafka.bootstrap_servers, topic, count=2)
    with pytest.raises(UnsupportedSchemaVersion, match=r"'2\.0' is not supported.*reads 1\.x"):
        read_envelope(major.required_value(), major.headers)
    with pytest.raises(ValueError) as caught:
        read_envelope(major.required_value(), major.headers)
    assert not isinstance(caught.value, InvalidEnvelope)
    envelope = read_envelope(minor.required_value(), minor.headers)
    assert (envelope.schema_version, envelope.event_id) == ("1.9", body["event_id"])
