"""Reading incidents and acting on them (acknowledge, resolve, reassign, notes).

Every action records a timeline entry saying who did it and when, in the same
transaction as the change, and is published on the change feed after commit.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.errors import FailedPrecondition, InvalidArgument, NotFound
from oncall_server.ids import is_valid_id, uuid7
from oncall_server.incidents.changes import Change, ChangeFeed
from oncall_server.incidents.model import AlertState, IncidentStatus
from oncall_server.ingest.coordination import Coordinator
from oncall_server.paging import escalation_state
from oncall_server.paging.outbox import ASSIGNED, LocalDispatcher, Paged, PageRequest, enqueue_pages
from oncall_server.storage import dialects
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import Alert, Incident, Service, TimelineEntry, User

MAX_NOTE = 64 * 1024


class _HasId(Protocol):
    id: Any


T = TypeVar("T", bound=_HasId)
OPEN_ALERT_STATES = (AlertState.TRIGGERED.value, AlertState.GROUPED.value, AlertState.ACKNOWLEDGED.value)


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    status: str | None = None
    service_id: str | None = None
    severity: int | None = None
    source: str | None = None


def encode_page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def decode_page_token(token: str) -> str | None:
    """The id a page token continues after; INVALID_ARGUMENT for a token we did not issue."""
    if not token:
        return None
    try:
        value = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        value = ""
    if not is_valid_id(value):
        raise InvalidArgument.field("page_token", "is not a token from a previous response")
    return value


def page_of(rows: list[T], page_size: int) -> tuple[list[T], str]:
    """Split ``page_size + 1`` fetched rows into the page and the token for the next one ("" at the end)."""
    if len(rows) <= page_size:
        return rows, ""
    return rows[:page_size], encode_page_token(rows[page_size - 1].id)


def clamp_page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or default, maximum)


class StepScheduler(Protocol):
    """The escalation timers (``paging.escalator.EscalationTimers``), as incident actions see them."""

    async def schedule(self, incident: Incident) -> None:
        """The incident's next step changed: tell the scheduler when it is due."""
        ...


class Incidents:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        coordinator: Coordinator,
        changes: ChangeFeed,
        timers: StepScheduler,
        dispatcher: LocalDispatcher,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.coordinator = coordinator
        self.changes = changes
        self.timers = timers  # told when an action changes an incident's next step
        self.dispatcher = dispatcher  # woken when an action enqueues pages

    async def _incident(
        self, session: AsyncSession, tenant_id: str, incident_id: str, *, lock: bool = False
    ) -> Incident:
        if not is_valid_id(incident_id):
            raise NotFound(f"incident {incident_id!r} not found")
        query = select(Incident).where(Incident.id == incident_id)
        if lock:  # NO KEY UPDATE: rows that refer to the incident (timeline, pages) can still be added
            query = query.with_for_update(key_share=True)
        incident = await session.scalar(query)
        if incident is None or incident.tenant_id != tenant_id:
            raise NotFound(f"incident {incident_id!r} not found")
        return incident

    @staticmethod
    async def lock_open_alerts(session: AsyncSession, tenant_id: str, incident_id: str) -> None:
        """Row locks on an incident's open alerts, taken before the incident's own (PostgreSQL)."""
        if dialects.of(session.get_bind()).row_locks and is_valid_id(incident_id):
            await session.execute(
                select(Alert.id)
                .where(
                    Alert.tenant_id == tenant_id,  # another tenant's id locks nothing
                    Alert.incident_id == incident_id,
                    Alert.state.in_(OPEN_ALERT_STATES),
                )
                .order_by(Alert.id)
                .with_for_update(key_share=True)
            )

    async def locked(self, session: AsyncSession, tenant_id: str, incident_id: str) -> Incident:
        """The incident, locked for an action in ``session`` (lock its open alerts first)."""
        return await self._incident(session, tenant_id, incident_id, lock=True)

    async def get(self, tenant_id: str, incident_id: str) -> Incident:
        async with self.sessions() as session:
            return await self._incident(session, tenant_id, incident_id)

    async def list_incidents(
        self, tenant_id: str, where: IncidentFilter, page_size: int, page_token: str
    ) -> tuple[list[Incident], str]:
        """Newest first; the token is the last id of the page."""
        after = decode_page_token(page_token)
        query = select(Incident).where(Incident.tenant_id == tenant_id)
        if where.status:
            query = query.where(Incident.status == where.status)
        if where.service_id:
            query = query.where(Incident.service_id == where.service_id)
        if where.severity:
            query = query.where(Incident.severity == where.severity)
        if where.source:
            query = query.where(Incident.source == where.source)
        if after:
            query = query.where(Incident.id < after)
        query = query.order_by(Incident.id.desc()).limit(page_size + 1)
        async with self.sessions() as session:
            rows = list((await session.scalars(query)).all())
        return page_of(rows, page_size)

    async def acknowledge(self, tenant_id: str, incident_id: str, actor: str) -> Incident:
        """Stops escalation. Acknowledging twice is harmless; a resolved incident can't be."""
        return await self._transition(
            tenant_id, incident_id, actor, IncidentStatus.ACKNOWLEDGED, allowed=(IncidentStatus.TRIGGERED,)
        )

    async def unacknowledge(self, tenant_id: str, incident_id: str, actor: str) -> Incident:
        """Back to triggered: escalation starts again."""
        return await self._transition(
            tenant_id, incident_id, actor, IncidentStatus.TRIGGERED, allowed=(IncidentStatus.ACKNOWLEDGED,)
        )

    async def resolve(self, tenant_id: str, incident_id: str, actor: str, summary: str = "") -> Incident:
        """Closes the incident and its alerts and frees their dedup keys and grouping window."""
        incident = await self._transition(
            tenant_id,
            incident_id,
            actor,
            IncidentStatus.RESOLVED,
            allowed=(IncidentStatus.TRIGGERED, IncidentStatus.ACKNOWLEDGED),
            summary=summary,
        )
        await self.release_resolved(incident)
        return incident

    async def release_resolved(self, incident: Incident) -> None:
        """After a resolve commits: free its alerts' dedup keys and its grouping window in Redis."""
        async with self.sessions() as session:
            keys = (
                await session.scalars(
                    select(Alert.dedup_key).where(
                        Alert.incident_id == incident.id, Alert.dedup_key.is_not(None)
                    )
                )
            ).all()
        await self.coordinator.release(incident.service_id, incident.id, [k for k in keys if k])

    async def _transition(
        self,
        tenant_id: str,
        incident_id: str,
        actor: str,
        target: IncidentStatus,
        *,
        allowed: tuple[IncidentStatus, ...],
        summary: str = "",
    ) -> Incident:
        now = self.clock.now()

        async def work(session: AsyncSession) -> tuple[Incident, TimelineEntry | None]:
            # Alerts before their incident, the order ingest locks them in (else: a deadlock).
            await self.lock_open_alerts(session, tenant_id, incident_id)
            incident = await self._incident(session, tenant_id, incident_id, lock=True)
            if incident.status == target.value:
                return incident, None
            if incident.status not in {s.value for s in allowed}:
                raise FailedPrecondition(
                    f"incident {incident_id!r} is {incident.status}; it cannot become {target.value}"
                )
            return incident, await self.apply_transition(session, incident, target, actor, now, summary)

        incident, entry = await retrying_write(self.sessions, work)
        if entry is None:
            return incident
        self.publish(incident, entry)
        await self.timers.schedule(incident)
        return incident

    async def apply_transition(
        self,
        session: AsyncSession,
        incident: Incident,
        target: IncidentStatus,
        actor: str,
        now: datetime,
        summary: str = "",
    ) -> TimelineEntry:
        """Move a locked incident (its open alerts locked first) to ``target`` in ``session``: its
        alerts, its escalation, its unsent pages and a timeline entry. The caller publishes the entry
        and tells the timers after commit."""
        incident.status = target.value
        incident.updated_at = now
        alert_values: dict[str, Any] = {"state": target.value}
        if target is IncidentStatus.ACKNOWLEDGED:
            incident.acknowledged_at, incident.acknowledged_by = now, actor
            service = await session.get(Service, incident.service_id)
            timeout = service.acknowledgement_timeout_seconds if service else None
            escalation_state.stop(incident, now, timeout)
            await escalation_state.cancel_unsent(
                session, incident.id, pages_only=True, reason=f"acknowledged by {actor}"
            )
            kind, message = "acknowledged", f"Acknowledged by {actor}"
        elif target is IncidentStatus.RESOLVED:
            incident.resolved_at, incident.resolved_by, incident.resolution_summary = now, actor, summary
            alert_values |= {"open_dedup_key": None, "resolved_at": now}
            escalation_state.stop(incident, now)
            await escalation_state.cancel_unsent(
                session, incident.id, pages_only=False, reason=f"resolved by {actor}"
            )
            kind, message = "resolved", summary or f"Resolved by {actor}"
        else:
            incident.acknowledged_at, incident.acknowledged_by = None, ""
            alert_values["state"] = AlertState.TRIGGERED.value
            escalation_state.restart(incident, now)
            kind, message = "unacknowledged", f"Acknowledgement withdrawn by {actor}; escalation restarts"
        await session.execute(
            update(Alert)
            .where(Alert.incident_id == incident.id, Alert.state.in_(OPEN_ALERT_STATES))
            .values(**alert_values)
        )
        entry = self.entry_for(incident, kind, actor, message, {}, now)
        session.add(entry)
        return entry

    async def reassign(self, tenant_id: str, incident_id: str, assignee: str, actor: str) -> Incident:
        """Hands the incident to a user (id or email) of the tenant and pages them at once."""
        assignee = assignee.strip()
        if not assignee:
            raise InvalidArgument.field("assigned_to", "must not be empty")
        now = self.clock.now()

        async def work(session: AsyncSession) -> tuple[Incident, TimelineEntry, Paged]:
            incident = await self._incident(session, tenant_id, incident_id, lock=True)
            if incident.status == IncidentStatus.RESOLVED.value:
                raise FailedPrecondition(f"incident {incident_id!r} is resolved")
            user = await session.scalar(
                select(User).where(
                    User.tenant_id == tenant_id,
                    (User.id == assignee) | (func.lower(User.email) == assignee.lower()),
                )
            )
            if user is None:
                raise InvalidArgument.field(
                    "assigned_to", f"no user {assignee!r} (id or email) in this tenant"
                )
            previous = incident.assigned_to
            incident.assigned_to = user.id
            incident.updated_at = now
            entry = self._entry(
                incident,
                "reassigned",
                actor,
                f"Reassigned to {user.name} by {actor}",
                {"assigned_to": user.id, "previous": previous},
            )
            session.add(entry)
            [paged], _ = await enqueue_pages(
                session,
                session.get_bind().dialect.name,
                [
                    PageRequest(
                        incident.tenant_id,
                        incident.id,
                        [user.id],
                        ASSIGNED,
                        f"{incident.id}:assign:{entry.id}",
                        0,
                        0,
                        0,
                    )
                ],
                now,
            )
            return incident, entry, paged

        incident, entry, paged = await retrying_write(self.sessions, work)
        self.publish(incident, entry)
        if paged.notifications:
            self.dispatcher.wake()
        return incident

    async def add_note(self, tenant_id: str, incident_id: str, note: str, actor: str) -> TimelineEntry:
        if not note.strip():
            raise InvalidArgument.field("note", "must not be empty")
        if len(note) > MAX_NOTE:
            raise InvalidArgument.field("note", f"must be at most {MAX_NOTE} characters")

        async def work(session: AsyncSession) -> tuple[Incident, TimelineEntry]:
            incident = await self._incident(session, tenant_id, incident_id, lock=True)
            incident.updated_at = self.clock.now()
            entry = self._entry(incident, "note", actor, note, {})
            session.add(entry)
            return incident, entry

        incident, entry = await retrying_write(self.sessions, work)
        self.publish(incident, entry)
        return entry

    async def list_alerts(
        self, tenant_id: str, incident_id: str, page_size: int, page_token: str
    ) -> tuple[list[Alert], str]:
        after = decode_page_token(page_token)
        async with self.sessions() as session:
            await self._incident(session, tenant_id, incident_id)
            query = (
                select(Alert).where(Alert.incident_id == incident_id).order_by(Alert.id).limit(page_size + 1)
            )
            if after:
                query = query.where(Alert.id > after)
            rows = list((await session.scalars(query)).all())
        return page_of(rows, page_size)

    async def timeline(
        self, tenant_id: str, incident_id: str, page_size: int, page_token: str
    ) -> tuple[list[TimelineEntry], str]:
        after = decode_page_token(page_token)
        async with self.sessions() as session:
            await self._incident(session, tenant_id, incident_id)
            query = (
                select(TimelineEntry)
                .where(TimelineEntry.incident_id == incident_id)
                .order_by(TimelineEntry.created_at, TimelineEntry.id)
                .limit(page_size + 1)
            )
            if after:
                query = query.where(TimelineEntry.id > after)
            rows = list((await session.scalars(query)).all())
        return page_of(rows, page_size)

    async def get_alert(self, tenant_id: str, alert_id: str) -> Alert:
        async with self.sessions() as session:
            alert = await session.get(Alert, alert_id) if is_valid_id(alert_id) else None
        if alert is None or alert.tenant_id != tenant_id:
            raise NotFound(f"alert {alert_id!r} not found")
        return alert

    async def entry(self, tenant_id: str, entry_id: str) -> TimelineEntry | None:
        async with self.sessions() as session:
            entry = await session.get(TimelineEntry, entry_id)
        return entry if entry is not None and entry.tenant_id == tenant_id else None

    def _entry(
        self, incident: Incident, kind: str, actor: str, message: str, details: dict[str, str]
    ) -> TimelineEntry:
        return self.entry_for(incident, kind, actor, message, details, self.clock.now())

    @staticmethod
    def entry_for(
        incident: Incident, kind: str, actor: str, message: str, details: dict[str, str], now: datetime
    ) -> TimelineEntry:
        return TimelineEntry(
            id=uuid7(),
            tenant_id=incident.tenant_id,
            incident_id=incident.id,
            kind=kind,
            actor=actor,
            message=message,
            details=details,
            created_at=now,
        )

    def publish(self, incident: Incident, entry: TimelineEntry) -> None:
        self.changes.publish([Change(incident.tenant_id, incident.service_id, incident.id, entry.id)])
