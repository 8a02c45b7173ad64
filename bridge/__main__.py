"""``python -m bridge`` is the ``xpander-bridge`` command."""

from __future__ import annotations

import sys

from bridge.cli import main

sys.exit(main())
