"""Task commands in tests: a config with the command direction on, producing
commands, and reading their replies."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson

from bridge.config import BridgeConfig
from bridge.emulator.server import Emulator
from bridge.transforms.commands import task_id_for
from support.e2e import bridge_config
from support.kafka import ConsumedRecord, KafkaService, OutRecord, consume, create_topics, produce


def commands_config(
    emu: Emulator,
    kafka: KafkaService,
    new_topic: Callable[[str], str],
    commands: dict[str, Any] | None = None,
    **sections: Any,
) -> BridgeConfig:
    return bridge_config(
        emu,
        kafka,
        new_topic,
        commands={
            "enabled": True,
            "commands_topic": new_topic("commands"),
            "results_topic": new_topic("results"),
            "group_id": new_topic("cmdgroup"),
            "retry_initial_s": 0.05,
            "retry_max_s": 0.5,
            "commit_interval_s": 0.1,
            **kafka.group_settings,
            **(commands or {}),
        },
        **sections,
    )


async def setup_command_topics(kafka: KafkaService, config: BridgeConfig) -> None:
    await create_topics(
        kafka.bootstrap_servers,
        config.commands.commands_topic,
        config.commands.results_topic,
        partitions=2,
    )


def created_task_id(config: BridgeConfig, command_id: str) -> str:
    return task_id_for(uuid.UUID(config.commands.id_namespace), command_id)


async def send_commands(
    kafka: KafkaService,
    config: BridgeConfig,
    commands: list[dict[str, Any] | bytes],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Keyed by the task each command is about (a create: the task it makes)."""
    records = []
    for command in commands:
        if isinstance(command, bytes):
            records.append(OutRecord(command, key=b"junk", headers=headers or ()))
            continue
        task = command.get("task_id") or created_task_id(config, command["command_id"])
        records.append(OutRecord(orjson.dumps(command), key=task.encode(), headers=headers or ()))
    await produce(kafka.bootstrap_servers, config.commands.commands_topic, records)


def replies(records: list[ConsumedRecord]) -> dict[str, dict[str, Any]]:
    """The last reply per command id."""
    return {
        (r.key or b"").decode(): orjson.loads(r.value or b"{}")
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
    }


async def read_replies(
    kafka: KafkaService, topic: str, count: int, max_wait: float = 30.0
) -> dict[str, dict[str, Any]]:
    records = await consume(
        kafka.bootstrap_servers,
        [topic],
        max_wait=max_wait,
        until=lambda rs: len(replies(rs)) >= count,
    )
    return replies(records)
