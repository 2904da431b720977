"""Prometheus Alertmanager's webhook (``webhook_configs``, payload version "4").

One notification is a group of alerts; each entry becomes one event keyed by the alert's
``fingerprint`` (a hash of its labels, the same in the firing and the resolved notification). A
``firing`` entry triggers, a ``resolved`` one resolves. Several Alertmanagers of an HA cluster
send the same notification: a repeated trigger deduplicates onto the open alert and a repeated
resolve finds no open alert (a recorded no-op), so duplicates are harmless.

Alertmanager retries 5xx and never 4xx (429 included), so an overloaded server answers it 503.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from oncall_server import json_codec
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.severity import DEFAULT_SEVERITY, Severity

# ``labels.severity`` words seen in Prometheus rule sets, lowercased. Anything else (or none) is
# the default, high: an alert is never refused or silenced for a word we do not know.
SEVERITY_WORDS: Mapping[str, Severity] = {
    "critical": Severity.CRITICAL,
    "crit": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "emergency": Severity.CRITICAL,
    "disaster": Severity.CRITICAL,
    "fatal": Severity.CRITICAL,
    "high": Severity.HIGH,
    "error": Severity.HIGH,
    "major": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "warn": Severity.MEDIUM,
    "medium": Severity.MEDIUM,
    "average": Severity.MEDIUM,
    "low": Severity.LOW,
    "minor": Severity.LOW,
    "info": Severity.INFO,
    "informational": Severity.INFO,
    "information": Severity.INFO,
    "notice": Severity.INFO,
    "none": Severity.INFO,
}

# Labels that name the machine, in order of preference: the page's "device".
DEVICE_LABELS = ("host", "hostname", "nodename", "node", "instance", "pod")

_ACTIONS = {"firing": EventAction.TRIGGER, "resolved": EventAction.RESOLVE}
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def severity_of(word: Any) -> Severity:
    """A ``labels.severity`` word as a severity; the default (high) for none or an unknown one."""
    if not isinstance(word, str) or not word.strip():
        return DEFAULT_SEVERITY
    word = word.strip().lower()
    return SEVERITY_WORDS.get(word) or Severity.parse(word) or DEFAULT_SEVERITY


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's own fingerprint of a label set (Prometheus ``LabelSet.Fingerprint``: FNV-1a
    64 over the sorted names and values, each followed by 0xff), for a sender that omits it."""
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode() + b"\xff":
                digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{digest:016x}"


def notification_alerts(payload: Any, sender: str) -> list[dict[str, Any]]:
    """The ``alerts`` of an Alertmanager-format notification, each a JSON object, or a 400."""
    if not isinstance(payload, dict):
        raise InvalidArgument.field("body", f"a {sender} notification must be a JSON object")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise InvalidArgument.field("alerts", f"is required: a {sender} notification lists its alerts")
    if not alerts:
        raise InvalidArgument.field("alerts", "is empty: a notification holds at least one alert")
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise InvalidArgument.field(f"alerts[{index}]", "must be a JSON object")
    return alerts


def string_map(alert: dict[str, Any], name: str, index: int) -> dict[str, str]:
    """``labels`` or ``annotations`` of one alert: an object of strings (absent: empty)."""
    value = alert.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument.field(f"alerts[{index}].{name}", "must be an object of strings")
    return {str(k): v if isinstance(v, str) else json_codec.dumps(v) for k, v in value.items()}


def action_of(alert: dict[str, Any], group_status: Any, index: int) -> EventAction:
    """``firing`` triggers, ``resolved`` resolves; an entry without its own status takes the group's."""
    status = alert.get("status", group_status)
    action = _ACTIONS.get(status.strip().lower()) if isinstance(status, str) else None
    if action is None:
        raise InvalidArgument.field(f"alerts[{index}].status", 'must be "firing" or "resolved"')
    return action


def fingerprint_of(alert: dict[str, Any], labels: dict[str, str], index: int) -> str:
    fingerprint = alert.get("fingerprint")
    if isinstance(fingerprint, str) and fingerprint.strip():
        return fingerprint.strip()
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise InvalidArgument.field(f"alerts[{index}].fingerprint", "must be a string")
    if not labels:
        raise InvalidArgument.field(
            f"alerts[{index}].fingerprint", "is required (or labels to compute it from)"
        )
    return label_fingerprint(labels)


def device_of(labels: Mapping[str, str]) -> str:
    return next((labels[name] for name in DEVICE_LABELS if labels.get(name)), "")


def link(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


class AlertmanagerAdapter:
    name = "alertmanager"
    # Alertmanager retries 5xx only: a 429 would lose the notification.
    overload_http_status = 503

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        alerts = notification_alerts(payload, "Alertmanager")
        group = {
            "receiver": payload.get("receiver"),
            "externalURL": payload.get("externalURL"),
            "groupKey": payload.get("groupKey"),
        }
        return [
            self.event(alert, index, payload.get("status"), group, context)
            for index, alert in enumerate(alerts)
        ]

    def event(
        self,
        alert: dict[str, Any],
        index: int,
        group_status: Any,
        group: dict[str, Any],
        context: AdapterContext,
    ) -> NormalizedEvent:
        labels = string_map(alert, "labels", index)
        annotations = string_map(alert, "annotations", index)
        fingerprint = fingerprint_of(alert, labels, index)
        title = (
            annotations.get("summary", "").strip()
            or annotations.get("title", "").strip()
            or labels.get("alertname", "").strip()
            or f"Alert from {context.integration_name}"
        )
        details = self.links(alert, group)
        details.update({f"label.{k}": v for k, v in sorted(labels.items())})
        details.update(
            {
                f"annotation.{k}": v
                for k, v in sorted(annotations.items())
                if k not in ("summary", "description") and v
            }
        )
        device = device_of(labels)
        if device:
            details["device_name"] = device
        if isinstance(alert.get("startsAt"), str):
            details["starts_at"] = alert["startsAt"]
        return NormalizedEvent(
            title=title[:1024],
            severity=severity_of(labels.get("severity")),
            dedup_key=f"{self.name}:{fingerprint}",
            source=self.name,
            source_ref=fingerprint,
            description=annotations.get("description", "") or annotations.get("message", ""),
            details=details,
            raw_payload=json_codec.dumps({**alert, **{k: v for k, v in group.items() if v is not None}}),
            action=action_of(alert, group_status, index),
        )

    def links(self, alert: dict[str, Any], group: dict[str, Any]) -> dict[str, str]:
        found = {
            "generator_url": link(alert.get("generatorURL")),
            "alertmanager_url": link(group.get("externalURL")),
        }
        return {k: v for k, v in found.items() if v}


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(AlertmanagerAdapter())
