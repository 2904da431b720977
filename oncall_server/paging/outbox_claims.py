"""Claiming outbox rows for the dispatcher: one transaction per batch.

Rows are claimed with a lease in one conditional UPDATE that also checks the incident (still
triggered, same escalation run), so once an acknowledgement commits no further page of that
incident is claimed; rows already claimed before it are the only ones that can still go out.
The same transaction cancels due rows their incident no longer wants, and records ``unknown`` the
at-most-once sends whose sender died mid-send (they are never sent again).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from oncall_server.incidents.model import IncidentStatus
from oncall_server.paging.outbox import DELIVERING, OUTBOX_COLUMNS, PAGE, SENDING, UNKNOWN, OutboxRow
from oncall_server.paging.outcomes import Outcomes, UnknownOutcome, count_when_committed
from oncall_server.paging.send_outcomes import note_outcome
from oncall_server.storage import bulk
from oncall_server.storage.models import Incident, Notification, TimelineEntry, User


def _deliverable() -> Any:
    """SQL: the row's incident still wants it — a page only while its escalation run is current."""
    return exists().where(
        Incident.id == Notification.incident_id,
        or_(
            and_(
                Notification.kind == PAGE,
                Incident.status == IncidentStatus.TRIGGERED.value,
                Incident.escalation_run == Notification.escalation_run,
            ),
            and_(Notification.kind != PAGE, Incident.status != IncidentStatus.RESOLVED.value),
        ),
    )


def _claimable(now: datetime) -> Any:
    return and_(
        Notification.next_attempt_at <= now,
        or_(
            Notification.status == "pending",
            and_(Notification.status == SENDING, Notification.lease_until < now),
        ),
    )


async def claim_due_rows(
    session: AsyncSession, now: datetime, lease: timedelta, limit: int
) -> tuple[list[OutboxRow], Outcomes | None]:
    """In the caller's write transaction: up to ``limit`` due rows, leased until ``now + lease``, and
    the outcomes of abandoned sends (None: there were none) to announce once it commits."""
    unknown = await _abandon_unknown(session, now)
    # Rows their incident no longer wants (acknowledged, resolved, a newer run) are cancelled.
    cancelled = await session.execute(
        update(Notification)
        .where(_claimable(now), ~_deliverable())
        .values(status="cancelled", last_error="the incident no longer escalates")
        .returning(Notification.channel)
        .execution_options(synchronize_session=False)
    )
    count_when_committed(session, "cancelled", (channel for (channel,) in cancelled))
    candidates = (
        select(Notification.id)
        .where(_claimable(now), _deliverable())
        .order_by(Notification.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Notification)
    )
    result = await session.execute(
        update(Notification)
        .where(Notification.id.in_(candidates.scalar_subquery()))
        .values(status=SENDING, lease_until=now + lease, attempts=Notification.attempts + 1)
        .returning(*(getattr(Notification, name) for name in OUTBOX_COLUMNS))
        .execution_options(synchronize_session=False)
    )
    return [OutboxRow.of(row) for row in result.all()], unknown


async def _abandon_unknown(session: AsyncSession, now: datetime) -> Outcomes | None:
    """``delivering`` rows whose lease ran out: their sender died mid-send. Recorded ``unknown``
    with a timeline entry, in the claim's transaction; never sent again."""
    result = await session.execute(
        update(Notification)
        .where(Notification.status == DELIVERING, Notification.lease_until < now)
        .values(
            status=UNKNOWN,
            lease_until=None,
            last_error="outcome unknown: the process sending it stopped mid-send",
        )
        .returning(Notification.id)
        .execution_options(synchronize_session=False)
    )
    ids = [row_id for (row_id,) in result]
    if not ids:
        return None
    rows = await session.execute(
        select(
            Notification.id,
            Notification.tenant_id,
            Notification.incident_id,
            Notification.user_id,
            Notification.channel,
            Notification.tier,
            Notification.attempts,
            Incident.service_id,
            User.name,
        )
        .join(Incident, Incident.id == Notification.incident_id)
        .outerjoin(User, User.id == Notification.user_id)
        .where(Notification.id.in_(ids))
    )
    outcomes = Outcomes([], [], [])
    for row in rows:
        unknown = UnknownOutcome(
            row.id,
            row.incident_id,
            row.channel,
            row.name or row.user_id,
            f"the process sending it stopped mid-send, attempt {row.attempts}",
        )
        note_outcome(outcomes, row, row.service_id, unknown.message(), UNKNOWN, "outcome unknown", now)
        outcomes.unknown.append(unknown)
    await bulk.execute_all(session, [(bulk.insert_into(TimelineEntry), outcomes.entries)])
    return outcomes
