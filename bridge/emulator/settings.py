"""Every knob of the emulator, in one pydantic model.

``EmulatorSettings`` is what ``Emulator(settings)`` and ``xpander-bridge emulator
--config FILE`` take. Unknown keys are refused (``extra="forbid"``) so a typo in a
test or a config file fails loudly instead of silently testing the default.

Groups:
    identity     host, port, organization, API key, agents, users, seed
    history      finished tasks per agent seeded at start (history_per_agent)
    activity     the least size of every activity log (activity_min_bytes)
    tasks        TaskProfile: how tasks created through the API behave
    scenario     ScenarioSettings: tasks the emulator creates by itself over time
    stream       StreamSettings: SSE semantics we do not know the platform's answer to
    faults       FaultSettings: injected failures, replaceable at run time
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_EVENT_MIX",
    "ENDPOINT_KINDS",
    "EmulatorSettings",
    "EndpointKind",
    "FaultSettings",
    "HttpFaultRule",
    "ScenarioSettings",
    "StreamSettings",
    "TaskProfile",
]

EndpointKind = Literal[
    "*",
    "list",
    "list_tasks",
    "list_user_tasks",
    "get",
    "create",
    "update",
    "stop",
    "activity",
    "report",
    "metrics",
    "stream",
]
#: The endpoint kinds faults and delays can target ("*" matches every kind).
#: ``list`` is both listings; ``list_tasks`` (by agent) and ``list_user_tasks``
#: (by user) name one of them.
ENDPOINT_KINDS: tuple[str, ...] = tuple(k for k in get_args(EndpointKind) if k != "*")

#: Relative weights of the body events of a streaming task. ``tool_call`` is a
#: ``tool_call_request`` + ``tool_call_result`` pair; ``context_status`` is a type
#: newer servers send, ``future_insight`` one no client knows.
DEFAULT_EVENT_MIX: dict[str, float] = {
    "chunk": 50.0,
    "tool_call": 12.0,
    "think": 5.0,
    "analyze": 4.0,
    "plan_updated": 3.0,
    "sub_agent_trigger": 2.0,
    "context_status": 3.0,
    "future_insight": 2.0,
}


def _every_endpoint() -> list[EndpointKind]:
    return ["*"]


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskProfile(_Knobs):
    """How one task behaves from start to its terminal status."""

    events_per_task: int = Field(
        30,
        ge=5,
        description="Events on a streaming task's stream, lifecycle events included "
        "(task_created, task_updated x2+, task_finished); the per-connection "
        "`connected` event is not counted.",
    )
    events_jitter: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Relative spread of events_per_task between tasks (0 = exactly that many).",
    )
    event_interval_s: float = Field(
        0.02, ge=0.0, description="Mean delay between two events of one task (0 = back to back)."
    )
    interval_jitter: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Each delay is event_interval_s * uniform(1 - j, 1 + j).",
    )
    pause_share: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of tasks that pause once, then resume."
    )
    pause_s: float | None = Field(
        None,
        ge=0.0,
        description="How long a pause lasts (status paused, waiting for a human), exactly; "
        "null = 3 times a drawn event interval.",
    )
    fail_share: float = Field(0.1, ge=0.0, le=1.0, description="Share ending `failed`.")
    error_share: float = Field(0.05, ge=0.0, le=1.0, description="Share ending `error`.")
    stop_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share ending `stopped` (as if a user stopped them: is_manually_stopped).",
    )
    sub_task_share: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of sub_agent_trigger events that also create a child task "
        "(non-streaming, parent_execution and triggering_agent_id set).",
    )
    event_mix: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_MIX),
        description="Relative weights of body event kinds: chunk, tool_call (a "
        "request/result pair), think, analyze, plan_updated, sub_agent_trigger, "
        "context_status, future_insight.",
    )
    stamp_emission: bool = Field(
        False,
        description="Add `emitted_at` (Unix seconds, float) to the envelope and to dict "
        "`data` of every event, so a consumer can compute end-to-end latency.",
    )


class ScenarioSettings(_Knobs):
    """Tasks the emulator creates on its own, arriving over time."""

    task_count: int | None = Field(
        0, ge=0, description="Tasks to create in total; 0 = none, null = keep creating forever."
    )
    arrival_interval_s: float = Field(
        1.0, ge=0.0, description="Mean gap between two arrivals (0 = all at once)."
    )
    streaming_share: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Share of scenario tasks created with events_streaming=true; the "
        "others only change status (visible through GET and list).",
    )
    max_active: int | None = Field(
        None, ge=1, description="Hold arrivals while this many scenario tasks are unfinished."
    )
    profile: TaskProfile = Field(
        default_factory=TaskProfile, description="How scenario tasks behave."
    )


class StreamSettings(_Knobs):
    """SSE semantics. Each is a knob because the platform's behaviour is unknown."""

    send_ids: bool = Field(
        True,
        description='Send an `id:` line per event ("1", "2", ... per task). Applies to '
        "events emitted after a change.",
    )
    honour_last_event_id: bool = Field(
        True,
        description="On a connect with a numeric Last-Event-ID, replay the task's events "
        "after that id first.",
    )
    replay: Literal["none", "full"] = Field(
        "none",
        description="On a connect without a usable Last-Event-ID: `none` sends only events "
        "emitted from now on, `full` sends the task's whole kept history first.",
    )
    retry_ms: int | None = Field(
        None, ge=0, description="Send `retry: <ms>` once at the start of every stream."
    )
    send_connected: bool = Field(
        True,
        description="Send a `connected` event (no id) first on every connection, as newer "
        "servers do. It is not part of the task's history.",
    )
    start_on_subscribe: bool = Field(
        True,
        description="A streaming task holds at pending, emitting nothing, until its first "
        "subscriber connects.",
    )
    keepalive_s: float | None = Field(
        None,
        gt=0.0,
        description="Send a `: keep-alive` comment each time a stream has waited this many "
        "seconds for the task's next event (null = never).",
    )
    linger_after_end: bool = Field(
        False,
        description="When a task ends, its streams neither get `task_finished` nor close: "
        "the task_updated with the terminal status is the last event, then only keep-alive "
        "comments (every keepalive_s; none when it is null) until the client leaves or the "
        "emulator stops, while REST says the task is terminal. task_finished is not "
        "emitted at all (replays lack it too). Decided per task when it ends; a connect to "
        "such a task lingers as well.",
    )
    redirect_to: str | None = Field(
        None,
        min_length=1,
        description="The events endpoint answers `307` with `Location: {redirect_to}{path "
        "and query of the request}` instead of streaming (after auth and injected faults), "
        "e.g. `http://127.0.0.1:9999` to send clients to another origin.",
    )
    history_limit: int = Field(
        5000, ge=1, description="Events kept per task for replay and inspection (oldest dropped)."
    )
    max_tasks: int = Field(
        100_000,
        ge=1,
        description="Tasks kept in memory; beyond it the oldest finished tasks are forgotten.",
    )


class HttpFaultRule(_Knobs):
    """Answer some calls of some endpoint kinds with an error status instead (or,
    with ``hang``, never; or, with ``oversize_bytes``, with a padded body)."""

    endpoints: list[EndpointKind] = Field(
        default_factory=_every_endpoint,
        description="Endpoint kinds the rule applies to (`*` = all; `stream` = SSE connects; "
        "`list` = both listings, `list_tasks` = by agent, `list_user_tasks` = by user).",
    )
    ids: list[str] | None = Field(
        None,
        description="Only calls whose path id is in this list match (null = every call). "
        "The path id is the task id where the path has one (get, update, stop, activity, "
        "stream), else the agent id (list_tasks, create, report, metrics), else the user id "
        "(list_user_tasks). Calls that do not match neither fire nor count down next_n.",
    )
    status: int = Field(503, ge=400, le=599, description="Status to answer with.")
    share: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability that a matching call fails (seeded)."
    )
    next_n: int = Field(0, ge=0, description="The next N matching calls fail (counted down).")
    retry_after_s: float | None = Field(
        None,
        ge=0.0,
        description="`Retry-After` header value; when null, 429 answers still send 1.",
    )
    hang: bool = Field(
        False,
        description="A firing call is never answered: no status line, no bytes, until the "
        "client gives up or the emulator stops (then the connection is closed unanswered). "
        "`status` and `retry_after_s` are not used.",
    )
    oversize_bytes: int | None = Field(
        None,
        ge=0,
        description="A firing call is answered as usual, but its JSON body is padded to "
        "this many bytes of valid JSON: a `_padding` string field is added to the object "
        "(status, update, ...) or to a listing's first item (an empty listing gets one item "
        "holding only it). The bytes are streamed from a generator, never held. `status` "
        "is not used; never applies to `stream` connects; ignored when `hang` is set.",
    )
    oversize_content_length: bool = Field(
        True,
        description="With oversize_bytes: announce the size in `Content-Length` (false: "
        "chunked transfer, so only a client that counts bytes notices).",
    )


class FaultSettings(_Knobs):
    """Injected failures. Replaceable at run time (``Emulator.set_faults``, PUT
    ``/_emulator/faults``); per-connection decisions are seeded by task id and
    connection number, so the same run gets the same faults."""

    drop_after_events: int | None = Field(
        None,
        ge=0,
        description="Close a stream abruptly (no chunked terminator) after this many events "
        "sent on that connection.",
    )
    drop_share: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of connections the drop applies to."
    )
    drop_max_per_task: int | None = Field(
        None, ge=0, description="Drop at most this many connections per task (null = no limit)."
    )
    stall_after_events: int | None = Field(
        None,
        ge=0,
        description="Stop sending bytes, connection kept open, after this many events sent "
        "on that connection.",
    )
    stall_share: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of connections the stall applies to."
    )
    stall_max_per_task: int | None = Field(
        None, ge=0, description="Stall at most this many connections per task."
    )
    stall_seconds: float | None = Field(
        None,
        ge=0.0,
        description="How long a stall lasts before sending resumes (null = until the client "
        "goes away or the emulator stops).",
    )
    malformed_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability that a malformed frame (not JSON, or JSON that is not an "
        "event; never with an id) is sent before an event.",
    )
    http: list[HttpFaultRule] = Field(
        default_factory=list,
        description="Error answers on REST calls and stream connects; the first rule that "
        "fires wins.",
    )
    delay_s: float = Field(0.0, ge=0.0, description="Added delay before answering a call.")
    delay_endpoints: list[EndpointKind] = Field(
        default_factory=_every_endpoint, description="Endpoint kinds delay_s applies to."
    )


class EmulatorSettings(_Knobs):
    """Everything ``Emulator`` needs. The defaults suit tests: no background tasks,
    tasks only when a test creates them."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(0, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    organization_id: str = Field(
        "org-emulator", description="The one organization; other org ids in stream paths 404."
    )
    api_key: str = Field(
        "emulator-key", description="The `x-api-key` every call must carry (changeable live)."
    )
    agent_ids: list[str] = Field(
        default_factory=lambda: ["agent-emulator-1", "agent-emulator-2", "agent-emulator-3"],
        min_length=1,
        description="Agents scenario tasks are spread over.",
    )
    user_ids: list[str] = Field(
        default_factory=lambda: ["user-emulator-1", "user-emulator-2"],
        min_length=1,
        description="Users scenario tasks are spread over.",
    )
    strict_agents: bool = Field(
        False, description="Refuse (404) calls naming an agent not in agent_ids."
    )
    history_per_agent: int = Field(
        0,
        ge=0,
        description="Finished tasks seeded per agent at start, as history a listing returns "
        "(terminal statuses with result, tokens and times in the past; no streams, no "
        "events). They count toward stream.max_tasks.",
    )
    activity_min_bytes: int = Field(
        0,
        ge=0,
        description="Make every activity log (GET /activity/{agent_id}/{task_id}) at least this "
        "many bytes of JSON, as a long task's thread is: filler tool-call entries (tool_name "
        "`emulator_filler`, a text result of up to 64 KiB each) are put before the agent's "
        "answer until the thread reaches the size. The thread still parses as the official "
        "client's AgentActivityThread; 0 = the thread as built from the task's events. "
        "Read on each call (changeable live), for every task.",
    )
    seed: int = Field(0, description="Same seed, same tasks and events (modulo wall-clock times).")
    tasks: TaskProfile = Field(
        default_factory=TaskProfile, description="How tasks created through the API behave."
    )
    scenario: ScenarioSettings = Field(
        default_factory=ScenarioSettings, description="Tasks created by the emulator itself."
    )
    stream: StreamSettings = Field(default_factory=StreamSettings, description="SSE semantics.")
    faults: FaultSettings = Field(default_factory=FaultSettings, description="Injected failures.")
