"""Facts of the xpander task API on the wire, read from the official client
(``xpander-sdk`` 2.0.537). One place, shared by the bridge and the emulator;
it imports nothing of the bridge, so anything may import it."""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, urlparse

__all__ = [
    "API_KEY_HEADER",
    "CLOUD_INBOUND_HOSTS",
    "EVENT_TYPES",
    "STATUSES",
    "TERMINAL_STATUSES",
    "Route",
    "derive_events_base",
    "events_root",
    "path",
]

API_KEY_HEADER: Final = "x-api-key"

#: ``AgentExecutionStatus`` values, lowercase as on the wire.
STATUSES: Final = frozenset(
    {"pending", "executing", "paused", "error", "failed", "completed", "stopped"}
)
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "error", "stopped"})

#: Event types the official client knows (``TaskUpdateEventType``). Others may
#: come: they are carried as sent (``bridge.envelope`` files them under ``other``).
EVENT_TYPES: Final = frozenset(
    {
        "connected",
        "task_created",
        "task_updated",
        "task_finished",
        "chunk",
        "auth_event",
        "tool_call_request",
        "tool_call_result",
        "sub_agent_trigger",
        "think",
        "analyze",
        "plan_updated",
        "task_compactization",
        "context_status",
        "agent_gateway_decision",
        "process_state_changed",
        "process_update",
        "gateway_steer_applied",
        "ask_user_questions",
        "sub_task_created",
        "sub_task_updated",
        "sub_task_finished",
        "invite_member",
        "member_invited",
        "ask_for_secret",
        "secret_saved",
        "live_surface_created",
        "inline_card",
    }
)

#: Hosts whose event streams live on the agent-controller host instead.
CLOUD_INBOUND_HOSTS: Final = {
    "inbound.xpander.ai": "https://agent-controller.xpander.ai",
    "inbound.stg.xpander.ai": "https://agent-controller.stg.xpander.ai",
}
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class Route:
    """REST paths relative to the base URL (``xpander_sdk.consts.api_routes``)."""

    LIST_TASKS: Final = "/agent-execution/executions/history/{agent_id}"
    LIST_USER_TASKS: Final = "/agent-execution/executions/history/user/{user_id}"
    GET_TASK: Final = "/agent-execution/{task_id}/status"
    TASK_CRUD: Final = "/agent-execution/{agent_or_task_id}"
    UPDATE_TASK: Final = "/agent-execution/{task_id}/update"
    ACTIVITY_LOG: Final = "/activity/{agent_id}/{task_id}"
    REPORT_TASK: Final = "/agent-execution/{agent_id}/report_task"
    REPORT_METRICS: Final = "/agents-metrics/{agent_id}/execution"
    #: relative to the event-stream root ``{events_base}/{organization_id}``
    TASK_EVENTS: Final = "/agent-execution/{task_id}/events"


def path(route: str, **ids: str) -> str:
    """A route with its ids filled in, each percent-encoded whole: an id is one
    path segment, whatever it holds (``../x?y`` cannot reach another endpoint).
    An empty id or one of dots only is refused (``ValueError``): URL libraries
    resolve those segments away, encoded or not."""
    for name, value in ids.items():
        if not value.strip("."):
            raise ValueError(f"{name} {value!r} cannot be a path segment")
    return route.format(**{name: quote(value, safe="") for name, value in ids.items()})


def derive_events_base(base_url: str) -> str:
    """The event-stream base for a REST base URL, exactly as the official client
    derives it (``xpander_sdk.modules.events.utils.generic.get_events_root``):
    the cloud inbound hosts map to their agent-controller host, a loopback API on
    port 8085 maps to ``http://localhost:9016``, anything else is used as is."""
    parsed = urlparse(base_url)
    host = (parsed.hostname or "").lower()
    if host in CLOUD_INBOUND_HOSTS:
        return CLOUD_INBOUND_HOSTS[host]
    if parsed.port == 8085 and host in _LOOPBACK_HOSTS:
        return "http://localhost:9016"
    return base_url.rstrip("/")


def events_root(events_base: str, organization_id: str) -> str:
    """``{events_base}/{organization_id}``: the prefix of every stream path."""
    return f"{events_base.rstrip('/')}/{organization_id}"
