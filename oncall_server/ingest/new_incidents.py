"""The incidents an ingest batch creates, and the escalation scheduler as the batch sees it.

Escalation starts in the batch's own transaction, so an incident never exists without it; the
writer knows nothing of policies, and the scheduler sees the batch only through these types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from oncall_server.incidents.changes import Change
from oncall_server.incidents.model import IncidentFacts


@dataclass(frozen=True, slots=True)
class NewIncident:
    """An incident this batch creates: its escalation starts in the same transaction."""

    incident_id: str
    tenant_id: str
    service_id: str
    last_alert_at: datetime
    facts: IncidentFacts | None = None  # what its pages say (service_name filled in by the starter)
    initial: InitialState | None = None  # the escalation state it was inserted with, if any


class InitialState(Protocol):
    """A new incident's escalation state once tier 1 is paged, from the escalation starter."""

    @property
    def snapshot(self) -> dict[str, Any]: ...

    @property
    def step(self) -> int: ...

    @property
    def due_at(self) -> datetime | None: ...


class StartedEscalations(Protocol):
    """What starting escalations added to the batch: statements and timeline rows for the writer to
    run in its transaction (with its own timeline rows, in one trip on SQLite), changes to publish."""

    entries: list[dict[str, Any]]
    writes: list[tuple[Any, list[dict[str, Any]]]]
    changes: list[Change]


class EscalationStarter(Protocol):
    """The escalation scheduler, as the writer sees it (the writer knows nothing of policies)."""

    async def start_in_transaction(
        self, conn: AsyncConnection, created: Sequence[NewIncident], now: datetime
    ) -> StartedEscalations: ...

    async def escalations_started(self, started: StartedEscalations) -> None: ...

    async def initial_escalations(
        self, conn: AsyncConnection, service_ids: Iterable[str], now: datetime
    ) -> Mapping[str, InitialState]: ...
