"""Datadog monitors, through the Webhooks integration with the payload in docs/integrations.md.

Datadog posts the JSON its webhook's Payload field holds, ``$VARIABLES`` replaced. A monitor
alerts once per scope (a multi-alert monitor: one per host, one per ``service:x,env:y``), and each
notification is a new Datadog event with a new ``$ID``: the dedup key is therefore the monitor
(``$ALERT_ID``) and the scope (``$ALERT_SCOPE``), never the event id, so ``Recovered`` closes what
``Triggered`` opened and ``Re-Triggered``/``Renotify`` deduplicate onto it.

Datadog retries 5xx only, so an overloaded server answers it 503.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.severity import DEFAULT_SEVERITY, Severity

PRIORITIES: Mapping[str, Severity] = {
    "p1": Severity.CRITICAL,
    "p2": Severity.HIGH,
    "p3": Severity.MEDIUM,
    "p4": Severity.LOW,
    "p5": Severity.INFO,
}
ALERT_TYPES: Mapping[str, Severity] = {
    "error": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "info": Severity.INFO,
    "success": Severity.INFO,
}
_RECOVERED = "recovered"
_WARNINGS = ("warn", "re-warn")
_MAX_KEY = 255
# "[P2] [Triggered on {host:web-01}] " before a title: the transition, not the condition.
_TRANSITION_PREFIX = re.compile(
    r"^(?:\[P\d\]\s*)?\[(?:Re-)?(?:Triggered|Recovered|Warn|No Data|Renotify)(?: on \{[^}]*\})?\]\s*",
    re.IGNORECASE,
)
_UNRESOLVED = re.compile(r"^\$[A-Z][A-Z0-9_.]*$")  # a $VARIABLE Datadog had no value for
_DETAILS = (
    ("alert_transition", "transition"),
    ("alert_scope", "scope"),
    ("alert_status", "status"),
    ("alert_query", "query"),
    ("alert_metric", "metric"),
    ("alert_priority", "priority"),
    ("alert_cycle_key", "alert_cycle_key"),
    ("id", "event_id"),
    ("hostname", "hostname"),
    ("tags", "tags"),
    ("link", "datadog_url"),
    ("snapshot", "snapshot_url"),
)


def value(payload: dict[str, Any], name: str) -> str:
    raw = payload.get(name)
    if raw is None or isinstance(raw, (dict, list)):
        return ""
    text = str(raw).strip()
    return "" if _UNRESOLVED.match(text) else text


def scope_of(payload: dict[str, Any]) -> str:
    """``$ALERT_SCOPE`` in one spelling: its tags trimmed and sorted (``*`` or empty: none)."""
    tags = sorted({t.strip() for t in value(payload, "alert_scope").split(",") if t.strip()} - {"*"})
    return ",".join(tags)


def dedup_key(monitor: str, scope: str) -> str:
    key = f"datadog:{monitor}:{scope}" if scope else f"datadog:{monitor}"
    if len(key) > _MAX_KEY:  # a scope of many tags: its digest, still one key per scope
        key = f"datadog:{monitor}:sha256:{hashlib.sha256(scope.encode()).hexdigest()}"
    return key


def severity_of(payload: dict[str, Any]) -> Severity:
    priority = PRIORITIES.get(value(payload, "alert_priority").lower())
    if priority is not None:
        return priority
    if value(payload, "alert_transition").lower() in _WARNINGS:
        return Severity.MEDIUM
    return ALERT_TYPES.get(value(payload, "alert_type").lower(), DEFAULT_SEVERITY)


def action_of(payload: dict[str, Any]) -> EventAction:
    transition = value(payload, "alert_transition").lower()
    if transition == _RECOVERED:
        return EventAction.RESOLVE
    if transition in ("", "null") and value(payload, "alert_type").lower() == "success":
        return EventAction.RESOLVE
    return EventAction.TRIGGER  # Triggered, Re-Triggered, Warn, Re-Warn, No Data, Renotify, ...


class DatadogAdapter:
    name = "datadog"
    # Datadog retries a webhook on 5xx only: a 429 would lose the notification.
    overload_http_status = 503

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        if not isinstance(payload, dict):
            raise InvalidArgument.field("body", "a Datadog webhook payload must be a JSON object")
        monitor = value(payload, "alert_id")
        if not monitor:
            raise InvalidArgument.field(
                "alert_id", 'is required: the webhook payload must hold "alert_id": "$ALERT_ID"'
            )
        scope = scope_of(payload)
        named = value(payload, "alert_title") or value(payload, "event_title")
        title = _TRANSITION_PREFIX.sub("", named) or f"Datadog monitor {monitor}"
        if scope:
            title = f"{title} ({scope})"
        details = {label: value(payload, name) for name, label in _DETAILS}
        details["monitor_id"] = monitor
        details["device_name"] = value(payload, "hostname") or _host_in(scope)
        return [
            NormalizedEvent(
                title=title[:1024],
                severity=severity_of(payload),
                dedup_key=dedup_key(monitor, scope),
                source="datadog",
                source_ref=monitor,
                description=value(payload, "event_msg") or value(payload, "alert_status"),
                details={k: v for k, v in details.items() if v},
                action=action_of(payload),
            )
        ]


def _host_in(scope: str) -> str:
    return next((t.removeprefix("host:") for t in scope.split(",") if t.startswith("host:")), "")


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(DatadogAdapter())
