"""The due set's members read back from SQL, for when Redis lost them.

SQL holds every incident's next step and due time, so the Redis due set can always be refilled:
whole after Redis lost it (or at startup), and piecemeal for overdue steps a process committed but
died before adding.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import to_millis
from oncall_server.incidents.model import IncidentStatus
from oncall_server.paging import escalation_state as state
from oncall_server.storage.models import Incident, Service

_PENDING_STEPS = select(
    Incident.id, Incident.escalation_run, Incident.escalation_step, Incident.escalation_due_at
)


async def all_members(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, int]]:
    """Every pending step and auto-resolve deadline, as (member, due ms)."""
    items: list[tuple[str, int]] = []
    async with sessions() as session:
        result = await session.stream(
            _PENDING_STEPS.where(Incident.escalation_due_at.is_not(None)).execution_options(yield_per=5000)
        )
        async for incident_id, run, step, due in result:
            if due is not None:
                items.append((state.step_member(incident_id, run, step), to_millis(due)))
        deadlines = await session.stream(
            select(Incident.id, Incident.last_alert_at, Service.auto_resolve_seconds)
            .join(Service, Service.id == Incident.service_id)
            .where(
                Incident.status != IncidentStatus.RESOLVED.value,
                Service.auto_resolve_seconds.is_not(None),
            )
            .execution_options(yield_per=5000)
        )
        async for incident_id, last_alert_at, seconds in deadlines:
            if seconds:
                deadline = last_alert_at + timedelta(seconds=seconds)
                items.append((state.auto_resolve_member(incident_id), to_millis(deadline)))
    return items


async def overdue_steps(
    sessions: async_sessionmaker[AsyncSession], due_before: datetime
) -> list[tuple[str, int]]:
    """Steps due at or before ``due_before`` (at most 10,000), as (member, due ms)."""
    async with sessions() as session:
        rows = await session.execute(
            _PENDING_STEPS.where(Incident.escalation_due_at <= due_before).limit(10_000)
        )
        return [
            (state.step_member(i, run, step), to_millis(due))
            for i, run, step, due in rows.all()
            if due is not None
        ]
