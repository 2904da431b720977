"""What every part knows of incidents and alerts: their states, and the facts a page tells."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class AlertState(enum.StrEnum):
    """Spec "Alert States"; stored as these strings."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    GROUPED = "grouped"
    RESOLVED = "resolved"
    SUPPRESSED = "suppressed"


class IncidentStatus(enum.StrEnum):
    """Stored as these strings."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """The incident side of a page, from a transaction that has it in hand (the ingest writer's)."""

    tenant_id: str
    incident_id: str
    service_id: str
    service_name: str
    title: str
    severity: int
    status: str
    description: str
    source: str
    source_ref: str
    details: dict[str, Any]
