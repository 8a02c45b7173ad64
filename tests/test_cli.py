"""The command line as users run it: a real subprocess, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("XPANDER", "KAFKA_"))}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_example() -> None:
    result = run_cli("check-config", "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "bootstrap_servers" in result.stdout


def test_check_config_masks_secrets() -> None:
    result = run_cli("check-config", env={"XPANDER_API_KEY": "super-secret-value"})
    assert result.returncode == 0, result.stderr
    assert "super-secret-value" not in result.stdout + result.stderr
    assert "**********" in result.stdout


def test_wrong_type_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  linger_ms: soon\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "kafka.linger_ms" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_key_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  bootstrap: x\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "kafka.bootstrap: unknown setting" in result.stderr


def test_missing_file_exits_2() -> None:
    result = run_cli("check-config", "/nonexistent/config.yaml")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_help_on_each_subcommand() -> None:
    for command in ("check-config", "run", "demo", "report", "emulator", "tail"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: xpander-bridge" in result.stdout


def test_the_event_loop_is_the_configured_one() -> None:
    import asyncio

    import uvloop

    from bridge.cli import _loop_factory
    from bridge.config import BridgeConfig

    assert _loop_factory(BridgeConfig()) is uvloop.new_event_loop
    chosen = BridgeConfig.model_validate({"pipeline": {"event_loop": "asyncio"}})
    assert _loop_factory(chosen) is None
    with asyncio.Runner(loop_factory=_loop_factory(BridgeConfig())) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
