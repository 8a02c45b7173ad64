"""``xpander-bridge tail``: follow one of the bridge's topics in a terminal.

Reads with the same Kafka settings as ``run`` (TLS and SASL included), as an
observer: no consumer group, nothing committed, committed records only. One
line per event for people (``--text``: the LLM's output as running text),
or each value as stored for ``jq`` (``--json``).

    options      the flags, parsed (no I/O)
    records      a record decoded: envelope, dead letter, tombstone, raw
    render       the human and the JSON printers
    reader       librdkafka: partitions, start offsets, polling, errors
    follow       the loop: signals, --max, --idle-exit
    command      argparse, config loading
"""

from __future__ import annotations

from bridge.tail.command import configure_parser, run

__all__ = ["configure_parser", "run"]
