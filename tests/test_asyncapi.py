"""The AsyncAPI document (`docs/asyncapi.yaml`, `python -m bridge.asyncapi`):
current, valid for the official parser (@asyncapi/parser, installed by
`scripts/install-tools.sh`), and faithful to the code: its schemas are the
committed ones, its channels every topic of the config, its headers what real
records carry, its topic settings what the bridge creates."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from pydantic import BaseModel

from bridge import __version__, asyncapi
from bridge.asyncapi import (
    CE_HEADERS,
    CE_SOURCE_TEMPLATE,
    DLQ_HEADERS,
    DLQ_SOURCES,
    INTERNAL_TOPICS,
    OUTPUT,
    PAYLOAD_SCHEMA_FORMAT,
    STATIC_CE_HEADERS,
    TOPICS,
    build_document,
    render,
    schema_key,
)
from bridge.config import BridgeConfig, CoordinationConfig, KafkaConfig, TopicsConfig
from bridge.core.message import InMessage
from bridge.core.record import OutRecord, acknowledge
from bridge.core.task import TaskState
from bridge.docgen import SCHEMAS
from bridge.envelope import Envelope
from bridge.kafka import topics as kafka_topics
from bridge.observability.metrics import DeadLetterReason, Metrics
from bridge.sinks.kafka.dead_letters import DeadLetterSink
from bridge.transforms.normalize import CE_TYPE_PREFIX, Normalizer
from bridge.transforms.reports import ExternalTaskReport, MetricsReport

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / OUTPUT
VALIDATOR = ROOT / "scripts" / "validate-asyncapi.mjs"
PARSER_DIR = Path(os.environ.get("ASYNCAPI_PARSER_DIR") or ROOT / ".tools" / "node")

#: message id -> the model whose committed schema is its payload
PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    "taskEnvelope": Envelope,
    "taskReport": ExternalTaskReport,
    "metricsReport": MetricsReport,
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text())
    assert isinstance(loaded, dict)
    return loaded


# --- current ---------------------------------------------------------------------


def test_committed_document_is_what_the_code_generates() -> None:
    assert DOCUMENT.read_text() == render(), (
        "docs/asyncapi.yaml is stale: run `python -m bridge.asyncapi` and commit it"
    )


def test_check_mode_fails_on_a_stale_file_and_passes_on_a_current_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert asyncapi.main(["--check", "--root", str(tmp_path)]) == 1  # missing
    assert asyncapi.main(["--root", str(tmp_path)]) == 0
    assert asyncapi.main(["--check", "--root", str(tmp_path)]) == 0
    path = tmp_path / OUTPUT
    path.write_text(path.read_text().replace("xpander.task.state", "xpander.task.stale"))
    assert asyncapi.main(["--check", "--root", str(tmp_path)]) == 1
    assert "is not current" in capsys.readouterr().err


# --- the official parser ---------------------------------------------------------


def parse(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Exit code and diagnostics of the official parser on ``path``. A missing
    node or parser fails the test: `make test` installs them first."""
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if node is None:
        pytest.fail("node not found: install Node.js (or set NODE_BIN) to run the AsyncAPI parser")
    if not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser" / "package.json").is_file():
        pytest.fail(
            f"@asyncapi/parser is not installed in {PARSER_DIR}: run `make tools` "
            "(bash scripts/install-tools.sh)"
        )
    proc = subprocess.run(
        [node, str(VALIDATOR), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ASYNCAPI_PARSER_DIR": str(PARSER_DIR)},
    )
    assert proc.returncode in (0, 1), f"the validator failed:\n{proc.stderr}"
    diagnostics = orjson.loads(proc.stdout)
    assert isinstance(diagnostics, list)
    return proc.returncode, diagnostics


def errors(diagnostics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in diagnostics if d["severity"] == "error"]


def test_the_official_parser_accepts_the_document() -> None:
    code, diagnostics = parse(DOCUMENT)
    assert errors(diagnostics) == []
    assert code == 0
    # Nothing but the hint that AsyncAPI 3.1 exists.
    assert {d["code"] for d in diagnostics} <= {"asyncapi-latest-version"}


def _drop_an_operations_action(document: dict[str, Any]) -> None:
    del document["operations"][TOPICS[0].operation]["action"]


def _unroot_a_schema_ref(document: dict[str, Any]) -> None:
    # The schema file's own $ref, which does not resolve inside the document.
    envelope = document["components"]["schemas"][schema_key("envelope.v1.json")]["schema"]
    envelope["properties"]["category"]["$ref"] = "#/$defs/Category"


def _mistype_a_payload_schema(document: dict[str, Any]) -> None:
    envelope = document["components"]["schemas"][schema_key("envelope.v1.json")]["schema"]
    envelope["properties"]["sequence"]["type"] = "integr"


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (_drop_an_operations_action, "operations"),
        (_unroot_a_schema_ref, "components"),
        (_mistype_a_payload_schema, "components"),
    ],
    ids=["required-field-dropped", "dangling-ref", "invalid-payload-schema"],
)
def test_the_parser_reports_a_broken_document(
    document: dict[str, Any], tmp_path: Path, mutate: Any, where: str
) -> None:
    broken = copy.deepcopy(document)
    mutate(broken)
    path = tmp_path / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    code, diagnostics = parse(path)
    assert code == 1
    found = errors(diagnostics)
    assert found, diagnostics
    assert all(d["path"][0] == where for d in found), found


# --- faithful: schemas --------------------------------------------------------------


def unroot(node: Any, base: str) -> Any:
    if isinstance(node, list):
        return [unroot(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: "#/" + value.removeprefix(base)
        if key == "$ref" and isinstance(value, str) and value.startswith(base)
        else unroot(value, base)
        for key, value in node.items()
    }


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_the_committed_file(document: dict[str, Any], name: str) -> None:
    key = schema_key(name)
    entry = document["components"]["schemas"][key]
    assert entry["schemaFormat"] == PAYLOAD_SCHEMA_FORMAT
    committed = orjson.loads((ROOT / "schemas" / name).read_bytes())
    assert unroot(entry["schema"], f"#/components/schemas/{key}/schema/") == committed


def test_schemas_are_exactly_the_committed_files(document: dict[str, Any]) -> None:
    on_disk = {path.name for path in (ROOT / "schemas").glob("*.json")}
    assert set(document["components"]["schemas"]) == {schema_key(name) for name in on_disk}


@pytest.mark.parametrize("message", sorted(PAYLOAD_MODELS))
def test_message_payload_is_the_committed_schema_of_its_model(
    document: dict[str, Any], message: str
) -> None:
    (name,) = [name for name, model in SCHEMAS.items() if model is PAYLOAD_MODELS[message]]
    payload = document["components"]["messages"][message]["payload"]
    assert payload == {"$ref": f"#/components/schemas/{schema_key(name)}"}


def test_examples_validate_against_their_message(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    for message_id, message in messages.items():
        assert message["examples"], f"{message_id} has an example"
        for example in message["examples"]:
            if "headers" in message:
                jsonschema.Draft7Validator(message["headers"]).validate(example["headers"])
            if message_id in PAYLOAD_MODELS:
                PAYLOAD_MODELS[message_id].model_validate(example["payload"])
                (name,) = [n for n, m in SCHEMAS.items() if m is PAYLOAD_MODELS[message_id]]
                schema = orjson.loads((ROOT / "schemas" / name).read_bytes())
                jsonschema.Draft202012Validator(schema).validate(example["payload"])


# --- faithful: topics ------------------------------------------------------------------


def config_topics() -> set[tuple[str, str]]:
    """Every (section, field) of the config that names a topic: the fields of
    ``topics`` holding a name, and any field called ``*_topic``."""
    found: set[tuple[str, str]] = set()
    for section, info in BridgeConfig.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for field, field_info in model.model_fields.items():
            names_a_topic = section == "topics" and field_info.annotation is str
            if names_a_topic or field.endswith("_topic"):
                found.add((section, field))
    return found


def test_every_topic_of_the_config_has_a_channel_or_is_internal(document: dict[str, Any]) -> None:
    documented = {(topic.section, topic.field) for topic in TOPICS}
    assert not documented & set(INTERNAL_TOPICS)
    assert config_topics() == documented | set(INTERNAL_TOPICS), (
        "a topic of the config is neither documented in bridge/asyncapi.py TOPICS "
        "nor declared internal"
    )
    defaults = BridgeConfig()
    for topic in TOPICS:
        channel = document["channels"][topic.channel]
        address = getattr(getattr(defaults, topic.section), topic.field)
        assert channel["address"] == channel["bindings"]["kafka"]["topic"] == address
    for expected in ("events", "state", "dlq", "reports", "metrics"):
        assert expected in document["channels"]


def test_operations_send_what_the_bridge_writes_and_receive_what_it_reads(
    document: dict[str, Any],
) -> None:
    actions = {
        operation["channel"]["$ref"].removeprefix("#/channels/"): operation["action"]
        for operation in document["operations"].values()
    }
    assert actions == {
        "events": "send",
        "state": "send",
        "dlq": "send",
        "activity": "send",
        "reports": "receive",
        "metrics": "receive",
        "commands": "receive",
        "commandResults": "send",
    }


async def test_topic_bindings_are_what_the_bridge_creates(
    document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    created: dict[str, tuple[dict[str, str], int]] = {}

    def capture(
        kafka: KafkaConfig,
        topics: TopicsConfig,
        wanted: dict[str, dict[str, str]],
        partitions: dict[str, int],
    ) -> None:
        for name, settings in wanted.items():
            created[name] = (settings, partitions.get(name, topics.partitions))

    monkeypatch.setattr(kafka_topics, "_create_missing", capture)
    coordination = CoordinationConfig()
    flows = BridgeConfig.model_validate(
        {"discovery": {"agent_ids": ["agent-1"]}, "commands": {"enabled": True}}
    )
    await kafka_topics.ensure_topics(
        KafkaConfig(), TopicsConfig(), coordination, kafka_topics.flow_topics(flows)
    )
    internal = {coordination.tasks_topic, coordination.checkpoints_topic}
    for topic in TOPICS:
        binding = document["channels"][topic.channel]["bindings"]["kafka"]
        if not topic.created:
            assert binding["topic"] not in created
            assert "partitions" not in binding
            continue
        settings, partitions = created.pop(binding["topic"])
        assert binding["partitions"] == partitions
        policy = settings.get("cleanup.policy")
        configured = binding.get("topicConfiguration", {}).get("cleanup.policy")
        assert configured == (policy.split(",") if policy else None), topic.channel
    assert set(created) == internal, "the bridge creates a topic the document does not show"
    state = document["channels"]["state"]["bindings"]["kafka"]
    assert state["topicConfiguration"]["cleanup.policy"] == ["compact"]


# --- faithful: headers and keys --------------------------------------------------------


def normalizer(max_request_bytes: int = 1_048_576) -> Normalizer:
    return Normalizer(TopicsConfig(), KafkaConfig(max_request_bytes=max_request_bytes), Metrics())


def frame(event_type: str, data: Any) -> bytes:
    return orjson.dumps(
        {"type": event_type, "task_id": "t-1", "time": "2026-11-26T03:00:00+00:00", "data": data}
    )


def header_schema(document: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    schema = document["components"]["messages"][message]["headers"]
    return jsonschema.Draft7Validator(schema)


def test_envelope_headers_and_key_are_what_the_normalizer_writes(document: dict[str, Any]) -> None:
    task = TaskState("t-1", "a-1", "o-1")
    snapshot = {"id": "t-1", "agent_id": "a-1", "organization_id": "o-1", "status": "executing"}
    records = normalizer().from_frame(task, frame("task_updated", snapshot), "7", 0.0)
    records += normalizer().from_frame(TaskState("t-2", None, None), frame("chunk", "x"), None, 0)
    assert {record.topic for record in records} == {"xpander.task.events", "xpander.task.state"}
    validator = header_schema(document, "taskEnvelope")
    for record in records:
        headers = {name: value.decode() for name, value in record.headers}
        assert len(headers) == len(record.headers), "no header name twice"
        assert set(headers) == set(CE_HEADERS)
        for name, value in STATIC_CE_HEADERS.items():
            assert headers[name] == value
        envelope = Envelope.model_validate_json(record.value or b"")
        assert record.key == envelope.task_id.encode()
        assert headers["ce_subject"] == envelope.task_id
        assert headers["ce_type"] == CE_TYPE_PREFIX + envelope.type
        assert headers["ce_source"] == CE_SOURCE_TEMPLATE.format(
            organization_id=envelope.organization_id or "-", agent_id=envelope.agent_id or "-"
        )
        validator.validate(headers)
    message = document["components"]["messages"]["taskEnvelope"]
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
    assert message["correlationId"]["location"] == "$message.payload#/task_id"


async def real_dead_letters() -> list[OutRecord]:
    """Dead letters of every kind the bridge writes, by the real code."""
    task = TaskState("t-1", "a-1", "o-1")
    small = normalizer(max_request_bytes=20_000)
    records = small.from_frame(task, b"{not json", "1", 0.0)
    records += small.from_oversized_frame(task, b'{"type": "chunk"', 10_000_000, "2", 0.0)
    records += small.from_frame(task, frame("chunk", "x" * 70_000), "3", 0.0)
    written: list[OutRecord] = []

    async def publish(batch: list[OutRecord]) -> None:
        for record in batch:
            written.append(record)
            acknowledge(record)

    message = InMessage("xpander.task.reports", 3, 1234, b"agent-7", b"{}", [("trace", b"1")])
    await DeadLetterSink("xpander.bridge.dlq", publish).write(
        message, DeadLetterReason.PLATFORM_REJECTED, "422: refused", 422
    )
    await DeadLetterSink("xpander.bridge.dlq", publish).write(
        message, DeadLetterReason.INVALID_REPORT, "unknown field(s): x", None
    )
    return [record for record in records + written if record.topic == "xpander.bridge.dlq"]


async def test_dead_letter_headers_are_what_real_dead_letters_carry(
    document: dict[str, Any],
) -> None:
    dead_letters = await real_dead_letters()
    validator = header_schema(document, "deadLetter")
    names: set[str] = set()
    sources: set[str] = set()
    for record in dead_letters:
        headers = {name: value.decode() for name, value in record.headers}
        names |= {name for name in headers if name.startswith("dlq.")}
        sources.add(headers["dlq.source"])
        validator.validate(headers)
    assert names == set(DLQ_HEADERS), "the documented dlq.* headers are the ones written"
    assert sources == set(DLQ_SOURCES)
    schema = document["components"]["messages"]["deadLetter"]["headers"]
    assert schema["properties"]["dlq.reason"]["enum"] == [r.value for r in DeadLetterReason]
    # The original message's own headers follow the bridge's.
    from_kafka = [r for r in dead_letters if dict(r.headers)["dlq.source"] == b"kafka"]
    assert all(r.headers[-1] == ("trace", b"1") and r.key == b"agent-7" for r in from_kafka)


def test_the_document_describes_the_bridges_point_of_view(document: dict[str, Any]) -> None:
    info = document["info"]
    assert document["asyncapi"] == "3.0.0"
    assert info["version"] == __version__
    assert "EVENTS.md" in info["description"]
    assert "point of view" in info["description"]
    assert build_document()["info"] == info
    server = document["servers"]["kafka"]
    assert server["protocol"] == "kafka"
    assert server["variables"]["bootstrap"]["default"] == ",".join(KafkaConfig().bootstrap_servers)
