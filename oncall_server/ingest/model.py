"""Values that flow through the ingest path."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from oncall_server.severity import Severity


class Outcome(enum.IntEnum):
    """What the pipeline did with one alert; values match ``oncall.v1.IngestOutcome``."""

    CREATED = 1
    DEDUPLICATED = 2
    GROUPED = 3
    SUPPRESSED = 4
    DROPPED = 5
    RECORDED = 6
    RESOLVED = 7
    ACKNOWLEDGED = 8
    NO_OP = 9


class EventAction(enum.IntEnum):
    """What a sender's event asks for; values match ``oncall.v1.EventAction``."""

    TRIGGER = 1
    ACKNOWLEDGE = 2
    RESOLVE = 3
    # Information only: recorded on the service's timeline, never an incident or a page.
    CHANGE = 4


@dataclass(slots=True)
class NormalizedEvent:
    """One alert as an adapter produced it, before routing."""

    title: str
    severity: Severity
    dedup_key: str | None = None
    source: str = ""
    source_ref: str = ""
    description: str = ""
    details: dict[str, str] = field(default_factory=dict)
    raw_payload: str = ""
    # Stored without an incident or page (e.g. a Defend detection below the paging threshold).
    record_only: bool = False
    # Set by an adapter whose source filters by design (Security drops below high): not stored, counted.
    drop_reason: str | None = None
    # A recovery or acknowledgement from the source acts on the open alert with ``dedup_key``.
    action: EventAction = EventAction.TRIGGER

    def fields(self) -> dict[str, Any]:
        """The event as plain JSON-able fields (what field-match rules and contract samples see)."""
        return {
            "title": self.title,
            "severity": self.severity.label,
            "dedup_key": self.dedup_key,
            "source": self.source,
            "source_ref": self.source_ref,
            "description": self.description,
            "details": self.details,
        }


@dataclass(slots=True)
class PreparedAlert:
    """An alert that passed routing, bound to its tenant, service and integration."""

    tenant_id: str
    service_id: str
    integration_id: str
    grouping_window_ms: int
    event: NormalizedEvent
    received_at: datetime
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer to one alert, sent only after its batch committed."""

    outcome: Outcome
    alert_id: str = ""
    incident_id: str = ""
    dedup_key: str = ""
