"""The config model: the example file, env overrides, secrets, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from bridge.config import BridgeConfig, load_config
from bridge.config_doc import render_env_table, render_example
from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.yaml"


def test_example_file_loads_through_the_models() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config == BridgeConfig()


def test_example_file_is_the_generated_one() -> None:
    # The example is generated from the models; regenerate with
    # `xpander-bridge check-config --print-example > config.example.yaml`.
    assert EXAMPLE.read_text() == render_example()


def test_readme_lists_every_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render_env_table() in readme


def _all_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    found = []
    for name, info in model.model_fields.items():
        found.append((prefix + name, info.description))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(_all_fields(annotation, prefix + name + "."))
    return found


def test_every_field_has_a_description() -> None:
    undocumented = [name for name, description in _all_fields(BridgeConfig) if not description]
    assert undocumented == []


def test_operator_environment_names_work_without_a_file(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={
            "XPANDER_BASE_URL": "http://127.0.0.1:9000",
            "XPANDER_API_KEY": "k-123",
            "XPANDER_ORGANIZATION_ID": "org-1",
            "XPANDER_BRIDGE_AGENT_IDS": "a1, a2,,a3",
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "XPANDER_BRIDGE_HTTP_PORT": "9100",
        },
    )
    assert config.platform.base_url == "http://127.0.0.1:9000"
    assert config.platform.api_key is not None
    assert config.platform.api_key.get_secret_value() == "k-123"
    assert config.platform.organization_id == "org-1"
    assert config.discovery.agent_ids == ["a1", "a2", "a3"]
    assert config.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert config.http.port == 9100
    assert config.missing_for_run() == []


@pytest.mark.parametrize(
    ("base_url", "events_base"),
    [
        ("https://inbound.xpander.ai", "https://agent-controller.xpander.ai"),
        ("https://inbound.stg.xpander.ai", "https://agent-controller.stg.xpander.ai"),
        ("http://localhost:8085", "http://localhost:9016"),
        ("http://127.0.0.1:9016/", "http://127.0.0.1:9016"),
        ("https://xpander.internal.example", "https://xpander.internal.example"),
    ],
)
def test_events_base_is_derived_like_the_official_client(base_url: str, events_base: str) -> None:
    config = load_config(None, environ={"XPANDER_BASE_URL": base_url})
    assert config.platform.events_base == events_base


def test_explicit_events_url_wins() -> None:
    config = load_config(
        None, environ={"XPANDER_BASE_URL": "https://a", "XPANDER_EVENTS_URL": "https://b/"}
    )
    assert config.platform.events_base == "https://b"


def test_generic_nested_override_and_yaml_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  enable_idempotence: true\n  linger_ms: 7\n")
    config = load_config(path, environ={"XPANDER_BRIDGE_KAFKA__ENABLE_IDEMPOTENCE": "false"})
    assert config.kafka.enable_idempotence is False
    assert config.kafka.linger_ms == 7


def test_secrets_from_files(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file\n")
    password = tmp_path / "pw"
    password.write_text("sasl-secret")
    config = load_config(
        None,
        environ={
            "XPANDER_API_KEY_FILE": str(key),
            "XPANDER_BRIDGE_KAFKA__SASL_PASSWORD_FILE": str(password),
        },
    )
    assert config.platform.api_key is not None
    assert config.platform.api_key.get_secret_value() == "from-file"
    assert config.kafka.sasl_password is not None
    assert config.kafka.sasl_password.get_secret_value() == "sasl-secret"


def test_secret_in_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("platform:\n  api_key: do-not-do-this\n")
    with pytest.raises(ConfigError, match=r"platform\.api_key") as caught:
        load_config(path, environ={})
    assert "do-not-do-this" not in str(caught.value)


def test_masked_dump_hides_secrets() -> None:
    config = load_config(
        None, environ={"XPANDER_API_KEY": "s3cr3t", "XPANDER_BRIDGE_KAFKA__SASL_PASSWORD": "pw"}
    )
    dumped = str(config.masked())
    assert "s3cr3t" not in dumped
    assert "pw'" not in dumped
    assert "**********" in dumped


@pytest.mark.parametrize(
    ("yaml_text", "env", "field"),
    [
        ("kafka:\n  linger_ms: soon\n", {}, "kafka.linger_ms"),
        ("kafka:\n  lingerms: 5\n", {}, "kafka.lingerms"),
        ("nonsense: {}\n", {}, "nonsense"),
        ("", {"XPANDER_BRIDGE_HTTP_PORT": "70000"}, "http.port"),
        ("", {"XPANDER_BRIDGE_STREAMS__NO_SUCH": "1"}, "XPANDER_BRIDGE_STREAMS__NO_SUCH"),
        ("topics:\n  routes: [{types: [chunk]}]\n", {}, "topics.routes.0"),
        ("kafka:\n  security_protocol: SASL_SSL\n", {}, "kafka"),
    ],
)
def test_bad_config_names_the_field(
    tmp_path: Path, yaml_text: str, env: dict[str, str], field: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=env)
    message = str(caught.value)
    assert field in message
    assert "\n" not in message


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})
