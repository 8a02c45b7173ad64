"""Bridge replicas as real processes (`python -m bridge run`), for the
scale-out tests: start, SIGTERM, SIGKILL, and their JSON logs."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson

from bridge.config import BridgeConfig
from bridge.emulator import Emulator
from support.e2e import config_env, run_bridge


def replica_env(emu: Emulator, config: BridgeConfig, name: str) -> dict[str, str]:
    """Everything a replica needs, from the environment only (as in Kubernetes)."""
    del emu  # the config already points at it
    return config_env(
        config,
        XPANDER_BRIDGE_COORDINATION__INSTANCE_ID=name,
        XPANDER_BRIDGE_REPORTS__ENABLED="false",
        XPANDER_BRIDGE_HTTP__ENABLED="false",
        XPANDER_BRIDGE_LOGGING__FORMAT="json",
    )


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self._env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Replica:
        log = self.log_path.open("ab")
        self.process = await run_bridge(self._env, stdout=asyncio.subprocess.DEVNULL, stderr=log)
        log.close()
        return self

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            if raw.startswith(b"{"):
                lines.append(orjson.loads(raw))
        return lines

    def owned(self) -> bool:
        return any(line["message"] == "coordination partitions assigned" for line in self.logs())

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
