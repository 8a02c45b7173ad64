"""The event loop's cost of one Kafka transaction of N records through the
bridge's own sink and producer (librdkafka), against the embedded broker:
handing the records over and committing (a transactional producer reports
only failures: ``delivery.report.only.error``; the commit reports the rest).

At a storm of task ends a transaction holds up to
``kafka.transaction_max_records`` (5,000) records; what the loop spends on
them is time the streams' events wait. CPU is ``time.thread_time`` of the
loop's thread (librdkafka's own threads are not in it).

    .venv/bin/python -m bench.transaction_cost [--records 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bridge.config import KafkaConfig, TopicsConfig
from bridge.core.record import OutRecord
from bridge.kafka.embedded import EmbeddedBroker
from bridge.sinks.kafka.producer import KafkaSink

#: an envelope's size and its CloudEvents headers, roughly
_VALUE = b"v" * 400
_HEADERS = [(f"ce_header_{n}", b"x" * 30) for n in range(7)]


async def measure(bootstrap: str, records: int, rounds: int) -> None:
    kafka = KafkaConfig(bootstrap_servers=[bootstrap], transactions=True)
    topics = TopicsConfig(
        events="cost.events", state="cost.state", dlq="cost.dlq", activity="cost.activity"
    )
    sink = KafkaSink(kafka, topics, transactional_id="transaction-cost")
    await sink.connect()
    loop = asyncio.get_running_loop()
    phases: dict[str, list[float]] = {"hand over": [], "commit": []}
    try:
        for round_ in range(rounds + 1):  # the first warms up (connections, metadata)
            batch = [
                OutRecord(
                    "cost.events", f"task-{n % 2500}".encode(), _VALUE, _HEADERS, "x", loop.time()
                )
                for n in range(records)
            ]
            failures: list[tuple[OutRecord, BaseException]] = []
            cpu = time.thread_time()
            await sink.begin()
            for record in batch:
                await sink.write_quiet(record, failures)
            handed = time.thread_time()
            await sink.commit()  # (the only report of the successes)
            committed = time.thread_time()
            assert not failures
            if round_:
                phases["hand over"].append(handed - cpu)
                phases["commit"].append(committed - handed)
    finally:
        await sink.aclose()
    print(f"| {records:,} records a transaction | loop CPU ms (median of {rounds}) | us/record |")
    print("|---|---|---|")
    for phase, values in phases.items():
        median = statistics.median(values)
        print(f"| {phase} | {median * 1000:.1f} | {median / records * 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        asyncio.run(measure(broker.bootstrap_servers, args.records, args.rounds))


if __name__ == "__main__":
    main()
