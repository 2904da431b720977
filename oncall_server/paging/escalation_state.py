"""An incident's escalation state and the transitions every path shares.

SQL is the truth: ``escalation_run`` is a fencing token bumped whenever
escalation stops or restarts, ``escalation_step`` the next step to run and
``escalation_due_at`` when. A scheduler member names (incident, run, step), so
a member left over from before an acknowledgement finds a different run in
SQL and does nothing (Grafana OnCall's "active escalation id" check).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from oncall_server.clock import to_millis
from oncall_server.paging.outcomes import count_when_committed
from oncall_server.storage.models import Incident, Notification

#: The step an acknowledged incident waits on when its service has an acknowledgement timeout.
ACK_TIMEOUT_STEP = -1
STEP_PREFIX = "e"
AUTO_RESOLVE_PREFIX = "r"


def step_member(incident_id: str, run: int, step: int) -> str:
    return f"{STEP_PREFIX}|{incident_id}|{run}|{step}"


def auto_resolve_member(incident_id: str) -> str:
    return f"{AUTO_RESOLVE_PREFIX}|{incident_id}"


def pending_member(incident: Incident) -> tuple[str, int] | None:
    """The scheduler member for the incident's next step, with its due time (ms); None if none."""
    if incident.escalation_due_at is None:
        return None
    return (
        step_member(incident.id, incident.escalation_run, incident.escalation_step),
        to_millis(incident.escalation_due_at),
    )


def stop(incident: Incident, now: datetime, ack_timeout_seconds: int | None = None) -> None:
    """Acknowledged or resolved: no further tier. An ack timeout leaves one step to re-trigger."""
    incident.escalation_run += 1
    if ack_timeout_seconds:
        incident.escalation_step = ACK_TIMEOUT_STEP
        incident.escalation_due_at = now + timedelta(seconds=ack_timeout_seconds)
    else:
        incident.escalation_due_at = None


def restart(incident: Incident, now: datetime) -> None:
    """From tier 1 again, on the policy snapshot taken when escalation first started."""
    incident.escalation_run += 1
    incident.escalation_step = 0
    incident.escalation_due_at = now


async def cancel_unsent(session: AsyncSession, incident_id: str, *, pages_only: bool, reason: str) -> None:
    """Unsent notifications of the incident will never go out (in the caller's transaction)."""
    query = update(Notification).where(
        Notification.incident_id == incident_id, Notification.status == "pending"
    )
    if pages_only:
        query = query.where(Notification.kind == "page")
    cancelled = await session.execute(
        query.values(status="cancelled", last_error=reason).returning(Notification.channel)
    )
    count_when_committed(session, "cancelled", (channel for (channel,) in cancelled))
