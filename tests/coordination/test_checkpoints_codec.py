"""The checkpoint's wire form: every field written, and read back the same."""

from __future__ import annotations

from dataclasses import fields

import orjson

from bridge.core.checkpoint import Checkpoint


def test_encode_writes_every_field_and_decode_reads_it_back() -> None:
    checkpoint = Checkpoint(
        task_id="t-1",
        agent_id="a-1",
        organization_id="o-1",
        sequence=7,
        last_sse_id="42",
        last_event_id="e-7",
        last_stream_event_id="e-6",
        first_event_id="e-1",
        status="executing",
        finished=False,
        written_at=1_700_000_000.5,
    )
    written = orjson.loads(checkpoint.encode())
    # encode() lists the fields by hand (for speed): a new field must be added there
    assert set(written) == {"v"} | {f.name for f in fields(Checkpoint)}
    assert Checkpoint.decode(checkpoint.encode()) == checkpoint
