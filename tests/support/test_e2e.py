"""The test helper that turns a config into environment variables round-trips."""

from __future__ import annotations

from bridge.config import BridgeConfig, load_config
from support.e2e import config_env


def test_config_env_round_trips_through_the_loader() -> None:
    config = BridgeConfig.model_validate(
        {
            "platform": {"api_key": "k-1", "organization_id": "o", "base_url": "http://x"},
            "discovery": {"agent_ids": ["a", "b"], "interval_s": 0.5},
            "topics": {"routes": [{"types": ["chunk"], "drop": True}]},
            "kafka": {"enable_idempotence": False},
        }
    )
    env = {k: v for k, v in config_env(config).items() if k.startswith(("XPANDER", "KAFKA"))}
    assert load_config(None, env) == config
