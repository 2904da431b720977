"""Zabbix, through a webhook media type (the script and parameters in docs/integrations.md).

The media type posts its parameters as one JSON object: Zabbix macros resolved for the problem,
its recovery or an update. ``event_id`` is ``{EVENT.ID}``, the problem event's id, which stays the
same in the recovery and update messages: it is the dedup key. ``event_value`` (``{EVENT.VALUE}``)
is 1 for a problem and 0 for its recovery; an update (``event_update_status`` 1) that acknowledged
the problem acknowledges the incident, any other update (a comment, a severity change) changes
nothing here and is counted as a drop. Zabbix retries a failed send on any error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.severity import DEFAULT_SEVERITY, Severity

# {EVENT.NSEVERITY}: 0 Not classified, 1 Information, 2 Warning, 3 Average, 4 High, 5 Disaster.
NSEVERITY = (Severity.INFO, Severity.INFO, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)
# {EVENT.SEVERITY}: the names (which an administrator may rename: the number is preferred).
SEVERITY_NAMES = {
    "not classified": Severity.INFO,
    "information": Severity.INFO,
    "warning": Severity.LOW,
    "average": Severity.MEDIUM,
    "high": Severity.HIGH,
    "disaster": Severity.CRITICAL,
}
# {EVENT.SOURCE}: 0 trigger, 1 discovery, 2 autoregistration, 3 internal (0 and 3 recover).
_RECOVERING_SOURCES = ("0", "3")
_DETAILS = (
    ("host_name", "host_name"),
    ("host_ip", "host_ip"),
    ("event_severity", "event_severity"),
    ("event_opdata", "operational_data"),
    ("event_tags", "tags"),
    ("event_date", "event_date"),
    ("event_time", "event_time"),
    ("trigger_id", "trigger_id"),
    ("event_recovery_id", "recovery_event_id"),
)


def value(payload: dict[str, Any], name: str) -> str:
    """A parameter as text; empty when absent or an unresolved macro (Zabbix sends ``{HOST.IP}``
    as written when it has no value for it)."""
    raw = payload.get(name)
    if raw is None or isinstance(raw, (dict, list)):
        return ""
    text = str(raw).strip()
    if len(text) > 2 and text[0] == "{" and text[-1] == "}" and " " not in text:
        return ""
    return text


def severity_of(payload: dict[str, Any]) -> Severity:
    number = value(payload, "event_nseverity")
    if number.isdigit() and int(number) < len(NSEVERITY):
        return NSEVERITY[int(number)]
    return SEVERITY_NAMES.get(value(payload, "event_severity").lower(), DEFAULT_SEVERITY)


class ZabbixAdapter:
    name = "zabbix"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        if not isinstance(payload, dict):
            raise InvalidArgument.field("body", "a Zabbix media type message must be a JSON object")
        event_id = value(payload, "event_id")
        if not event_id:
            raise InvalidArgument.field(
                "event_id", "is required: set the media type parameter event_id to {EVENT.ID}"
            )
        source = value(payload, "event_source") or "0"
        action, drop = self.action(payload, source)
        title = (
            value(payload, "event_name")
            or value(payload, "subject")
            or value(payload, "trigger_name")
            or f"Zabbix event {event_id}"
        )
        details = {label: value(payload, name) for name, label in _DETAILS}
        details["device_name"] = details["host_name"]
        zabbix_url = value(payload, "zabbix_url").rstrip("/")
        if zabbix_url:
            details["zabbix_url"] = zabbix_url
            if details["trigger_id"]:
                details["event_url"] = (
                    f"{zabbix_url}/tr_events.php?triggerid={details['trigger_id']}&eventid={event_id}"
                )
        return [
            NormalizedEvent(
                title=title[:1024],
                severity=severity_of(payload),
                dedup_key=f"zabbix:{event_id}",
                source="zabbix",
                source_ref=event_id,
                description=value(payload, "message") or value(payload, "trigger_description"),
                details={k: v for k, v in details.items() if v},
                action=action,
                drop_reason=drop,
            )
        ]

    def action(self, payload: dict[str, Any], source: str) -> tuple[EventAction, str | None]:
        if source not in _RECOVERING_SOURCES:
            return EventAction.TRIGGER, None  # discovery and autoregistration never recover
        event_value = value(payload, "event_value")
        if event_value not in ("0", "1"):
            raise InvalidArgument.field(
                "event_value", "must be 1 (problem) or 0 (recovery): set it to {EVENT.VALUE}"
            )
        if event_value == "0":
            return EventAction.RESOLVE, None
        if value(payload, "event_update_status") == "1":
            if _acknowledges(payload):
                return EventAction.ACKNOWLEDGE, None
            return EventAction.TRIGGER, "a Zabbix problem update other than an acknowledgement"
        return EventAction.TRIGGER, None


def _acknowledges(payload: dict[str, Any]) -> bool:
    """An update that acknowledged the problem: ``{EVENT.ACK.STATUS}`` Yes and, when the media type
    sends ``{EVENT.UPDATE.ACTION}`` ("acknowledged and commented", "changed severity ..."), this
    update is the one that acknowledged (not a later comment on an acknowledged problem)."""
    if value(payload, "event_ack_status").lower() != "yes":
        return False
    update_action = value(payload, "event_update_action").lower()
    return not update_action or "acknowledged" in update_action.replace("unacknowledged", "")


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(ZabbixAdapter())
