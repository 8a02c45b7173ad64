"""Emulator emission speed: events/s the emulator emits and a lean reader in
another process reads. The work is in ``bridge.emulator.speedtest``.

    .venv/bin/python bench/emulator_speed.py --preset burst
    .venv/bin/python bench/emulator_speed.py --preset wide --concurrency 2000
    .venv/bin/python bench/emulator_speed.py --preset steady --streams 2000 --rate 20000 \
        --duration-s 10
"""

from __future__ import annotations

import argparse
import sys

from bridge.emulator.speedtest import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
