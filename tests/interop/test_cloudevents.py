"""The CloudEvents Python SDK decodes every record of the events topic in
binary mode (Kafka protocol binding: ``ce_*`` headers, ``content-type``) and
gets the envelope's id, type, source, subject and time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.v1 import kafka as ce_kafka_v1
from support.kafka import ConsumedRecord

from bridge.envelope import Envelope, read_envelope
from interop.helpers import Published

pytestmark = pytest.mark.timeout(120)


def expected_attributes(envelope: Envelope) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": envelope.event_id,
        "type": f"ai.xpander.task.{envelope.type}",
        "source": (
            f"/xpander/organizations/{envelope.organization_id or '-'}"
            f"/agents/{envelope.agent_id or '-'}"
        ),
        "subject": envelope.task_id,
        "time": envelope.occurred_at,
        "datacontenttype": "application/json",
        "partitionkey": envelope.task_id,  # the SDK's extension for the record key
    }


def message(record: ConsumedRecord) -> ce_kafka.KafkaMessage:
    headers = dict(record.headers)
    assert len(headers) == len(record.headers), "each header once: a dict loses none"
    return ce_kafka.KafkaMessage(headers=headers, key=record.key, value=record.required_value())


def test_sdk_decodes_every_record_in_binary_mode(published: Published) -> None:
    for record in published.events:
        envelope = read_envelope(record.required_value(), record.headers)
        event = ce_kafka.from_binary_event(message(record))
        assert event.get_attributes() == expected_attributes(envelope)
        assert event.get_time() == envelope.occurred_at  # parsed, time zone included
        assert event.get_data() == json.loads(record.required_value())
        # binary mode, found by the SDK's own detection too
        assert ce_kafka.from_kafka_event(message(record)).get_id() == envelope.event_id


def test_sdk_1x_api_decodes_every_record(published: Published) -> None:
    """``cloudevents.kafka.from_binary`` of SDK 1.x, kept in 2.x as ``cloudevents.v1.kafka``."""
    for record in published.events:
        envelope = read_envelope(record.required_value(), record.headers)
        event = ce_kafka_v1.from_binary(
            ce_kafka_v1.KafkaMessage(dict(record.headers), record.key, record.required_value())
        )
        expected = expected_attributes(envelope)
        assert event["id"] == expected["id"]
        assert event["type"] == expected["type"]
        assert event["source"] == expected["source"]
        assert event["subject"] == expected["subject"]
        assert event["time"] == (record.header("ce_time") or b"").decode()  # 1.x: the string
        assert event["partitionkey"] == record.key  # 1.x keeps the key's bytes
        assert event.get_data() == json.loads(record.required_value())
