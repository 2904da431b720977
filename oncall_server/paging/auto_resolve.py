"""Auto-resolve: an incident whose service resolves quiet incidents, and that has been quiet that long."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock, to_millis
from oncall_server.incidents.actions import Incidents
from oncall_server.incidents.model import IncidentStatus
from oncall_server.paging import escalation_state as state
from oncall_server.paging.escalation_steps import duration_text
from oncall_server.storage.models import Alert, Incident, Service


class AutoResolver:
    """Runs an auto-resolve member of the due set once it is due."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], clock: Clock, incidents: Incidents
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.incidents = incidents

    async def run(self, incident_id: str) -> list[tuple[str, int]]:
        """Resolve the incident if it is still quiet; returns the member to schedule instead when a
        newer alert moved its deadline (else nothing)."""
        async with self.sessions() as session:
            incident = await session.get(Incident, incident_id)
            if incident is None or incident.status == IncidentStatus.RESOLVED.value:
                return []
            service = await session.get(Service, incident.service_id)
            # A repeat of a deduplicated alert is news too: the problem is still there.
            last_seen = await session.scalar(
                select(func.max(Alert.last_seen_at)).where(Alert.incident_id == incident_id)
            )
        if service is None or not service.auto_resolve_seconds:
            return []
        quiet_since = max(incident.last_alert_at, last_seen or incident.last_alert_at)
        deadline = quiet_since + timedelta(seconds=service.auto_resolve_seconds)
        if deadline > self.clock.now():  # a newer alert moved it
            return [(state.auto_resolve_member(incident_id), to_millis(deadline))]
        await self.incidents.resolve(
            incident.tenant_id,
            incident_id,
            "system",
            f"Auto-resolved: no new alerts for {duration_text(service.auto_resolve_seconds)}",
        )
        return []
