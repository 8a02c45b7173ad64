"""``xpander-bridge command``: a command written by the CLI is run by the
bridge, and ``--wait`` prints the reply."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import orjson
import pytest
from support.commands import commands_config, setup_command_topics
from support.e2e import ROOT, config_env
from support.kafka import KafkaService
from support.waiting import eventually

from bridge.app import Bridge
from bridge.emulator.server import Emulator

pytestmark = pytest.mark.timeout(90)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "command",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out, err


async def test_create_then_stop_with_wait_prints_the_replies(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator() as emu:
        config = commands_config(emu, kafka, new_topic, streams={"enabled": False})
        await setup_command_topics(kafka, config)
        env = config_env(config)
        async with Bridge(config) as bridge:
            await eventually(lambda: bridge.health.ready, timeout_s=30, what="ready")
            code, out, err = await _cli(
                env, "create", "--agent", "agent-emulator-1", "--prompt", "hi", "--wait"
            )
            assert code == 0, err
            reply = orjson.loads(out)
            assert reply["outcome"] == "ok" and reply["command"] == "create"
            task_id = reply["task_id"]
            assert emu.engine.tasks[task_id].wire["input"]["text"] == "hi"
            code, out, err = await _cli(env, "stop", "--task", task_id, "--wait")
            assert code == 0, err
            assert orjson.loads(out)["status"] == "stopped"


async def test_an_invalid_command_is_refused_before_sending(
    kafka: KafkaService, new_topic: Callable[[str], str]
) -> None:
    async with Emulator() as emu:
        config = commands_config(emu, kafka, new_topic)
        code, _, err = await _cli(
            config_env(config), "update", "--task", "t-1", "--status", "finished"
        )
        assert code == 2, err
        assert b"status" in err
