"""What a source's resolve, acknowledge and change events do. None of them ever pages anyone.

A monitoring tool's recovery message that woke a technician would be the worst kind of noise. A
resolve closes the open alert with its dedup key, and the incident too once none of its alerts is
open (when its service says ``resolve_from_source``); an acknowledge acknowledges the open alert's
incident (``acknowledge_from_source``); a change event is recorded on the service's timeline.
None creates an alert or an incident: one that finds no open alert is accepted as a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.ids import uuid7
from oncall_server.incidents.actions import OPEN_ALERT_STATES, Incidents
from oncall_server.incidents.model import AlertState, IncidentStatus
from oncall_server.ingest.coordination import Coordinator
from oncall_server.ingest.integrations import IntegrationContext
from oncall_server.ingest.model import EventAction, IngestResult, NormalizedEvent, Outcome
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import Alert, AlertDelivery, Incident, Service, ServiceEvent, TimelineEntry


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """An acknowledge, resolve or change event, with the integration it came through."""

    context: IntegrationContext
    event: NormalizedEvent


@dataclass(slots=True)
class _Applied:
    """What one transaction did, for after its commit."""

    results: list[IngestResult] = field(default_factory=list)
    no_ops: list[tuple[SourceEvent, str]] = field(default_factory=list)  # with the reason
    entries: list[tuple[Incident, TimelineEntry]] = field(default_factory=list)
    resolved_incidents: dict[str, Incident] = field(default_factory=dict)
    acknowledged_incidents: dict[str, Incident] = field(default_factory=dict)
    released_keys: list[tuple[str, str, str]] = field(default_factory=list)  # service, incident, key


class _Hit(NamedTuple):
    """An acknowledge or resolve event and the open alert it found, locked with its incident."""

    session: AsyncSession
    source_event: SourceEvent
    alert: Alert
    incident: Incident
    service: Service | None
    now: datetime


def actor_of(context: IntegrationContext) -> str:
    """Who the timeline says acted: the integration, so a technician sees which tool closed it."""
    return f"source:{context.name}"


class SourceEvents:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        coordinator: Coordinator,
        incidents: Incidents,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.coordinator = coordinator
        self.incidents = incidents

    async def apply(
        self, events: Sequence[SourceEvent], received_at: datetime
    ) -> tuple[list[IngestResult], list[tuple[SourceEvent, str]]]:
        """Apply ``events`` in order in one transaction; a result per event, and the no-ops with why."""
        applied = await retrying_write(
            self.sessions, lambda session: self._apply(session, events, received_at)
        )
        for incident, entry in applied.entries:
            self.incidents.publish(incident, entry)
        for incident in [*applied.resolved_incidents.values(), *applied.acknowledged_incidents.values()]:
            await self.incidents.timers.schedule(incident)
        for incident in applied.resolved_incidents.values():
            await self.incidents.release_resolved(incident)
        for service_id, incident_id, key in applied.released_keys:
            if incident_id not in applied.resolved_incidents:
                await self.coordinator.release_keys(service_id, incident_id, [key])
        return applied.results, applied.no_ops

    async def _apply(self, session: AsyncSession, events: Sequence[SourceEvent], now: datetime) -> _Applied:
        applied = _Applied()
        for source_event in events:
            event = source_event.event
            if event.action is EventAction.CHANGE:
                applied.results.append(await self._change(session, source_event, now))
                continue
            key = event.dedup_key or ""
            alert = await session.scalar(
                select(Alert)
                .where(Alert.service_id == source_event.context.service_id, Alert.open_dedup_key == key)
                .with_for_update(key_share=True)
            )
            if alert is None or alert.incident_id is None:
                applied.results.append(IngestResult(Outcome.NO_OP, dedup_key=key))
                applied.no_ops.append((source_event, f"no open alert with dedup key {key!r}"))
                continue
            # Alerts before their incident, the order ingest and incident actions lock them in.
            await self.incidents.lock_open_alerts(session, alert.tenant_id, alert.incident_id)
            incident = await self.incidents.locked(session, alert.tenant_id, alert.incident_id)
            service = await session.get(Service, incident.service_id)
            session.add(AlertDelivery(alert_id=alert.id, received_at=now, raw_payload=event.raw_payload))
            hit = _Hit(session, source_event, alert, incident, service, now)
            if event.action is EventAction.RESOLVE:
                await self._resolve(hit, applied)
            else:
                await self._acknowledge(hit, applied)
        return applied

    async def _resolve(self, hit: _Hit, applied: _Applied) -> None:
        session, source_event, alert, incident, service, now = hit
        actor = actor_of(source_event.context)
        key = alert.open_dedup_key or ""
        alert.state, alert.open_dedup_key, alert.resolved_at, alert.last_seen_at = (
            AlertState.RESOLVED.value,
            None,
            now,
            now,
        )
        applied.released_keys.append((incident.service_id, incident.id, key))
        entry = self.incidents.entry_for(
            incident,
            "alert_resolved",
            actor,
            f"Alert resolved by {source_event.context.name}: {alert.title}",
            {"alert_id": alert.id, "dedup_key": key},
            now,
        )
        session.add(entry)
        applied.entries.append((incident, entry))
        applied.results.append(IngestResult(Outcome.RESOLVED, alert.id, incident.id, key))
        if incident.status == IncidentStatus.RESOLVED.value or not (service and service.resolve_from_source):
            return
        await session.flush()
        still_open = await session.scalar(
            select(func.count())
            .select_from(Alert)
            .where(Alert.incident_id == incident.id, Alert.state.in_(OPEN_ALERT_STATES))
        )
        if still_open:
            return
        summary = f"All alerts resolved by their source ({source_event.context.name})"
        entry = await self.incidents.apply_transition(
            session, incident, IncidentStatus.RESOLVED, actor, now, summary
        )
        applied.entries.append((incident, entry))
        applied.resolved_incidents[incident.id] = incident

    async def _acknowledge(self, hit: _Hit, applied: _Applied) -> None:
        session, source_event, alert, incident, service, now = hit
        key = alert.open_dedup_key or ""
        if not (service and service.acknowledge_from_source):
            applied.results.append(IngestResult(Outcome.NO_OP, alert.id, incident.id, key))
            applied.no_ops.append(
                (
                    source_event,
                    "the service does not take acknowledgements from sources (acknowledge_from_source)",
                )
            )
            return
        applied.results.append(IngestResult(Outcome.ACKNOWLEDGED, alert.id, incident.id, key))
        if incident.status != IncidentStatus.TRIGGERED.value:
            return  # acknowledged already: harmless, as for a technician
        entry = await self.incidents.apply_transition(
            session, incident, IncidentStatus.ACKNOWLEDGED, actor_of(source_event.context), now
        )
        applied.entries.append((incident, entry))
        applied.acknowledged_incidents[incident.id] = incident

    async def _change(self, session: AsyncSession, source_event: SourceEvent, now: datetime) -> IngestResult:
        context, event = source_event.context, source_event.event
        row = ServiceEvent(
            id=uuid7(),
            tenant_id=context.tenant_id,
            service_id=context.service_id,
            integration_id=context.integration_id,
            summary=event.title,
            source=event.source,
            details=event.details,
            raw_payload=event.raw_payload,
            occurred_at=now,
            created_at=now,
        )
        session.add(row)
        return IngestResult(Outcome.RECORDED, row.id, "", event.dedup_key or "")
