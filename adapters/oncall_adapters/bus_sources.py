"""Adapters for the One-suite sources that publish on the bus: RMM, Security, Backups, PSA.

Each is pure: one event payload in, normalized alerts out. Routing to a
tenant (``tenant_id``) and storage are the core's work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oncall_adapters._fields import details, require_object, require_text, severity, text
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.severity import Severity


class RmmAdapter:
    """Device threshold breaches; severity maps directly, source_ref is the RMM alert or device ID."""

    name = "rmm"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        event = require_object(payload, "RMM")
        require_text(event, "tenant_id", "title", "severity")
        ref = text(event, "alert_id") or text(event, "device_id")
        if not ref:
            raise InvalidArgument.field("alert_id", "is required (or device_id)")
        return [
            NormalizedEvent(
                title=text(event, "title")[:1024],
                severity=severity(event),
                dedup_key=f"rmm:{ref}",
                source="rmm",
                source_ref=ref,
                description=text(event, "description"),
                details=details(
                    event, "device_id", "device_name", "check", "value", "threshold", "tenant_id"
                ),
            )
        ]


class SecurityAdapter:
    """M365 posture changes and dark-web hits; only critical and high create incidents."""

    name = "security"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        event = require_object(payload, "Security")
        require_text(event, "tenant_id", "event_id", "title", "severity")
        level = severity(event)
        return [
            NormalizedEvent(
                title=text(event, "title")[:1024],
                severity=level,
                dedup_key=f"security:{text(event, 'event_id')}",
                source="security",
                source_ref=text(event, "event_id"),
                description=text(event, "description"),
                details=details(event, "event_type", "account", "tenant_id"),
                drop_reason=None
                if level.at_least(Severity.HIGH)
                else f"security events below high page nobody ({level.label})",
            )
        ]


BACKUP_FAILURES = {
    "job_failure": "Backup job failed",
    "replication_failure": "Backup replication failed",
    "storage_quota_exceeded": "Backup storage quota exceeded",
}


class BackupsAdapter:
    """Every failure event creates an incident (no deduplication: each failure is its own)."""

    name = "backups"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        event = require_object(payload, "Backups")
        require_text(event, "tenant_id", "event_type", "job_id")
        kind = text(event, "event_type")
        if kind not in BACKUP_FAILURES:
            raise InvalidArgument.field("event_type", f"must be one of {', '.join(BACKUP_FAILURES)}")
        target = text(event, "device_name") or text(event, "job_name") or text(event, "job_id")
        return [
            NormalizedEvent(
                title=text(event, "title") or f"{BACKUP_FAILURES[kind]}: {target}",
                severity=Severity.parse(text(event, "severity")) or Severity.HIGH,
                dedup_key=None,
                source="backups",
                source_ref=text(event, "job_id"),
                description=text(event, "description"),
                details=details(event, "event_type", "job_id", "job_name", "device_name", "tenant_id"),
            )
        ]


class PsaAdapter:
    """SLA breach events, for after-hours escalation; one incident per ticket and breach."""

    name = "psa"

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        event = require_object(payload, "PSA")
        require_text(event, "tenant_id", "ticket_id")
        ticket = text(event, "ticket_id")
        breach = text(event, "breach_type", "sla_breach")
        return [
            NormalizedEvent(
                title=text(event, "title") or f"SLA breach on ticket {ticket}",
                severity=Severity.parse(text(event, "severity")) or Severity.HIGH,
                dedup_key=f"psa:{ticket}:{breach}",
                source="psa",
                source_ref=ticket,
                description=text(event, "description"),
                details=details(event, "ticket_id", "breach_type", "client", "due_at", "tenant_id"),
            )
        ]


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    for adapter in (RmmAdapter(), SecurityAdapter(), BackupsAdapter(), PsaAdapter()):
        register(adapter)
