"""``xpander-bridge``: the command line.

Exit codes: 0 success (a clean stop on SIGTERM included), 1 a runtime failure,
2 a bad configuration or bad arguments (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from asyncio import AbstractEventLoop
from collections.abc import Callable, Sequence

import yaml

from bridge import __version__
from bridge.config import BridgeConfig, load_config
from bridge.errors import ConfigError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

Handler = Callable[[argparse.Namespace], int]


def _check_config(args: argparse.Namespace) -> int:
    if args.print_example:
        from bridge.config_doc import render_example

        sys.stdout.write(render_example())
        return EXIT_OK
    config = load_config(args.config)
    sys.stdout.write(yaml.safe_dump(config.masked(), sort_keys=False))
    for missing in config.missing_for_run():
        print(f"note: `run` still needs {missing}", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.runner import run_bridge

    config = load_config(args.config)
    with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
        return runner.run(run_bridge(config))


def _loop_factory(config: BridgeConfig) -> Callable[[], AbstractEventLoop] | None:
    """The configured event loop's factory (``None``: asyncio's own)."""
    if config.pipeline.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.demo import run_demo

    return asyncio.run(
        run_demo(duration_s=args.duration, http_port=args.http_port, kafka_port=args.kafka_port)
    )


def _emulator(args: argparse.Namespace) -> int:
    import bridge.emulator.cli as emulator_cli

    return emulator_cli.run(args)


def _configure_emulator(parser: argparse.ArgumentParser) -> None:
    try:
        import bridge.emulator.cli as emulator_cli
    except ImportError:  # pragma: no cover - the emulator ships with the package
        return
    emulator_cli.configure_parser(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpander-bridge",
        description="xpander.ai task events into Kafka, and external task runs back.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective config, secrets masked",
        description=(
            "Load the config file and the environment exactly as `run` does, and print "
            "the effective configuration with secrets masked. Exit 2 on any error."
        ),
    )
    check.add_argument("config", nargs="?", help="YAML config file (optional: env alone works)")
    check.add_argument(
        "--print-example", action="store_true", help="print a config file with every option"
    )
    check.set_defaults(handler=_check_config)

    run = commands.add_parser(
        "run",
        help="run the bridge until SIGTERM/SIGINT",
        description=(
            "Stream task events from the platform into Kafka and record reports from "
            "Kafka on the platform, until SIGTERM or SIGINT; then drain and exit 0."
        ),
    )
    run.add_argument("--config", help="YAML config file (optional: env alone works)")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo",
        help="the emulator, an embedded Kafka broker and the bridge, with a live summary",
        description=(
            "Start the platform emulator (tasks arriving all the time), an embedded "
            "Kafka-compatible broker and the bridge between them; show events/s by type, "
            "tasks by status and the queue until Ctrl-C, then stop cleanly."
        ),
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--http-port", type=int, default=8080, help="metrics port (0: any)")
    demo.add_argument(
        "--kafka-port",
        type=int,
        help="the embedded broker's port, kept while the demo runs (default 19092, or "
        "$XPANDER_BRIDGE_DEMO_KAFKA_PORT; 0: any; a taken port falls back to a free one)",
    )
    demo.set_defaults(handler=_demo)

    report = commands.add_parser(
        "report",
        help="write one external task report (or metrics) message to Kafka",
        description=(
            "Validate and write one message to the reports topic (or the metrics topic with "
            "--metrics), as the bridge will consume it. Kafka settings come from the config "
            "file and the environment, exactly as for `run`."
        ),
    )
    from bridge import report_cli

    report_cli.configure_parser(report)
    report.set_defaults(handler=report_cli.run)

    command = commands.add_parser(
        "command",
        help="write one task command (create, update, stop) to Kafka; --wait prints the reply",
        description=(
            "Validate and write one command to the commands topic, as the bridge will consume "
            "it (commands.enabled). Kafka settings come from the config file and the "
            "environment, exactly as for `run`."
        ),
    )
    from bridge import command_cli

    command_cli.configure_parser(command)
    command.set_defaults(handler=command_cli.run)

    tail = commands.add_parser(
        "tail",
        help="follow the events topic (or another of the bridge's topics) in the terminal",
        description=(
            "Print the envelopes arriving on the events topic (or --topic state, dlq or "
            "any name), one line each, with the same Kafka settings as `run` (config file "
            "and environment; TLS and SASL included). No consumer group is joined and "
            "nothing is committed; only committed records are read. Starts at the end "
            "(now) unless --from-beginning or --since. Ctrl-C stops. Exit 1 with one line "
            "when Kafka cannot be reached or the topic does not exist."
        ),
    )
    from bridge import tail as tail_cli

    tail_cli.configure_parser(tail)
    tail.set_defaults(handler=tail_cli.run)

    emulator = commands.add_parser(
        "emulator",
        help="serve the xpander platform emulator (REST API and event streams)",
        description="Serve an emulator of the xpander task API on one port.",
    )
    _configure_emulator(emulator)
    emulator.set_defaults(handler=_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"xpander-bridge: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
