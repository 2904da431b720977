"""Uptime Kuma's Webhook notification (body encoding "application/json", no custom body).

Kuma posts ``{"heartbeat": {...}, "monitor": {...}, "msg": "[name] [🔴 Down] reason"}`` when a
monitor goes down or comes back up. ``heartbeat.status``: 0 down (trigger), 1 up (resolve),
2 pending and 3 maintenance (dropped: nothing to page or close). The dedup key is the monitor's id,
the same in both messages. Kuma's "Test" button sends ``heartbeat`` and ``monitor`` null: it is
recorded on the service's timeline as a change event and pages nobody. Severity: high, or the
value of a monitor tag named ``severity`` (critical, high, medium, low, info).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.severity import Severity

DOWN, UP, PENDING, MAINTENANCE = 0, 1, 2, 3
_DROPPED = {
    PENDING: "Uptime Kuma heartbeat pending (still retrying)",
    MAINTENANCE: "Uptime Kuma monitor in maintenance",
}


def _text(value: Any) -> str:
    return "" if value is None or isinstance(value, (dict, list)) else str(value).strip()


def severity_of(monitor: dict[str, Any]) -> Severity:
    tags = monitor.get("tags")
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, dict) and _text(tag.get("name")).lower() == "severity":
            parsed = Severity.parse(_text(tag.get("value")))
            if parsed is not None:
                return parsed
    return Severity.HIGH


class UptimeKumaAdapter:
    name = "uptime_kuma"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        if not isinstance(payload, dict):
            raise InvalidArgument.field("body", "an Uptime Kuma notification must be a JSON object")
        heartbeat, monitor = payload.get("heartbeat"), payload.get("monitor")
        if heartbeat is None and monitor is None:
            if not _text(payload.get("msg")):
                raise InvalidArgument.field("heartbeat", "is required (or msg, for Kuma's test message)")
            return [self.test_message(payload)]
        if not isinstance(heartbeat, dict):
            raise InvalidArgument.field("heartbeat", "must be an object (Uptime Kuma's heartbeat)")
        if not isinstance(monitor, dict):
            raise InvalidArgument.field("monitor", "must be an object (Uptime Kuma's monitor)")
        monitor_id = _text(monitor.get("id")) or _text(heartbeat.get("monitorID"))
        if not monitor_id:
            raise InvalidArgument.field("monitor.id", "is required")
        status = heartbeat.get("status")
        if status not in (DOWN, UP, PENDING, MAINTENANCE) or isinstance(status, bool):
            raise InvalidArgument.field("heartbeat.status", "must be 0 (down), 1 (up), 2 or 3")
        name = _text(monitor.get("name")) or f"monitor {monitor_id}"
        reason = _text(heartbeat.get("msg"))
        state = "is up" if status == UP else "is down"
        title = f"{name} {state}: {reason}" if reason and status != UP else f"{name} {state}"
        target = _text(monitor.get("url"))
        if target in ("", "https://"):  # Kuma's placeholder for monitors without a URL
            target = ""
        host = _text(monitor.get("hostname")) or (urlsplit(target).hostname or "" if target else "")
        details = {
            "monitor_id": monitor_id,
            "monitor_type": _text(monitor.get("type")),
            "url": target,
            "device_name": host,
            "heartbeat_time": _text(heartbeat.get("time")),
            "timezone": _text(heartbeat.get("timezone")),
            "message": _text(payload.get("msg")),
        }
        return [
            NormalizedEvent(
                title=title[:1024],
                severity=severity_of(monitor),
                dedup_key=f"uptime_kuma:{monitor_id}",
                source="uptime_kuma",
                source_ref=monitor_id,
                description=reason,
                details={k: v for k, v in details.items() if v},
                action=EventAction.RESOLVE if status == UP else EventAction.TRIGGER,
                drop_reason=_DROPPED.get(status),
            )
        ]

    def test_message(self, payload: dict[str, Any]) -> NormalizedEvent:
        return NormalizedEvent(
            title=_text(payload.get("msg"))[:1024],
            severity=Severity.INFO,
            source="uptime_kuma",
            action=EventAction.CHANGE,
        )


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(UptimeKumaAdapter())
