"""``xpander-bridge emulator``: serve the emulator until SIGINT/SIGTERM.

On start it prints the three settings a client needs (as environment lines the
official client reads) and the control surface address. Exit 0 on a signal,
2 on bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.emulator.scenarios import PRESETS, preset
from bridge.emulator.settings import EmulatorSettings

__all__ = ["configure_parser", "run"]

_DEFAULT_PORT = 9016


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="JSON (or YAML) file with EmulatorSettings; flags below override it",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help=f"port (default {_DEFAULT_PORT}; 0 = any free port)"
    )
    parser.add_argument("--org", dest="organization_id", help="organization id")
    parser.add_argument("--api-key", help="the x-api-key clients must send")
    parser.add_argument("--seed", type=int, help="seed for tasks, events and faults")
    parser.add_argument(
        "--scenario",
        choices=PRESETS,
        default=None,
        help="background workload (default: demo, or the config file's)",
    )
    parser.add_argument("--replay", choices=("none", "full"), help="replay on a fresh connect")
    parser.add_argument("--no-ids", action="store_true", help="send no SSE id: lines")
    parser.add_argument(
        "--no-start-on-subscribe",
        action="store_true",
        help="streaming tasks start at once instead of on their first subscriber",
    )
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="measure emission speed (burst preset) and exit",
    )


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def build_settings(args: argparse.Namespace) -> EmulatorSettings:
    data: dict[str, Any] = _load(args.config) if getattr(args, "config", None) else {}
    data.setdefault("port", _DEFAULT_PORT)
    for field in ("host", "port", "organization_id", "api_key", "seed"):
        value = getattr(args, field, None)
        if value is not None:
            data[field] = value
    stream = data.setdefault("stream", {})
    if getattr(args, "replay", None):
        stream["replay"] = args.replay
    if getattr(args, "no_ids", False):
        stream["send_ids"] = False
    if getattr(args, "no_start_on_subscribe", False):
        stream["start_on_subscribe"] = False
    scenario = getattr(args, "scenario", None)
    if scenario is not None or "scenario" not in data:
        data["scenario"] = preset(scenario or "demo").model_dump()
    return EmulatorSettings.model_validate(data)


async def _serve(settings: EmulatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from bridge.emulator.server import Emulator  # here: `xpander-bridge run` never needs it

    async with Emulator(settings) as emu:
        print(f"xpander emulator listening on {emu.base_url}", flush=True)
        print(f"XPANDER_BASE_URL={emu.base_url}")
        print(f"XPANDER_ORGANIZATION_ID={emu.organization_id}")
        print(f"XPANDER_API_KEY={emu.api_key}")
        print(f"events:  {emu.base_url}/{emu.organization_id}/agent-execution/<task_id>/events")
        print(f"control: {emu.base_url}/_emulator/stats", flush=True)
        await stop.wait()
        print("xpander emulator stopping", flush=True)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "selftest", False):
        from bridge.emulator import speedtest

        selftest = argparse.Namespace(
            preset="burst",
            concurrency=400,
            tasks=None,
            events=None,
            streams=None,
            rate=None,
            duration_s=None,
        )
        return speedtest.main(selftest)
    try:
        settings = build_settings(args)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"xpander-bridge emulator: bad settings: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(settings))
    return 0
