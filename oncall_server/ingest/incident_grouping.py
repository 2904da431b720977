"""Which incidents a batch's newly inserted alerts open or join, in SQL.

Incidents are upserted on their primary key (the id Redis chose), so an id whose creator died
before committing is created by the next alert naming it; one that was resolved meanwhile
returns no row, and its alerts open a fresh incident instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlalchemy import insert, null, update

from oncall_server.incidents.model import AlertState, IncidentFacts, IncidentStatus
from oncall_server.ingest.coordination import Repair
from oncall_server.ingest.model import IngestResult, Outcome
from oncall_server.ingest.new_incidents import InitialState, NewIncident
from oncall_server.storage import bulk
from oncall_server.storage.models import Alert, Incident

if TYPE_CHECKING:
    from oncall_server.ingest.batch import Batch, Slot


async def open_incidents(batch: Batch, inserted: list[Slot]) -> None:
    """Create or extend the incidents that newly inserted alerts belong to."""
    if not inserted:
        return
    by_incident: dict[str, list[Slot]] = defaultdict(list)
    opening: set[str] = set()  # services of the incidents this batch may create
    for slot in inserted:
        incident_id, alert_state = batch.target_incident(slot)
        by_incident[incident_id].append(slot)
        if alert_state is AlertState.TRIGGERED:
            opening.add(slot.alert.service_id)
    # Inserted with the state tier 1's page moves them to: no update of the new row after it.
    initial: Mapping[str, InitialState] = {}
    if batch.escalations is not None and opening:
        initial = await batch.escalations.initial_escalations(batch.conn, opening, batch.now)
    rows = []
    for incident_id in sorted(by_incident):
        members = by_incident[incident_id]
        first = members[0].alert
        state = initial.get(first.service_id)
        rows.append(
            {
                "id": incident_id,
                "tenant_id": first.tenant_id,
                "service_id": first.service_id,
                "title": first.event.title,
                "severity": int(first.event.severity),
                "status": IncidentStatus.TRIGGERED.value,
                "source": first.event.source,
                "source_ref": first.event.source_ref,
                "dedup_key": first.event.dedup_key,
                "description": first.event.description,
                "details": first.event.details,
                "alert_count": len(members),
                "assigned_to": "",
                "created_at": batch.now,
                "updated_at": batch.now,
                "last_alert_at": max(s.alert.received_at for s in members),
                "acknowledged_at": None,
                "acknowledged_by": "",
                "resolved_at": None,
                "resolved_by": "",
                "resolution_summary": "",
                # Without a state from the starter: step 0, due now, advanced in this transaction.
                "escalation_snapshot": state.snapshot if state else null(),
                "escalation_run": 1,
                "escalation_step": state.step if state else 0,
                "escalation_due_at": state.due_at if state else batch.now,
            }
        )
    counts = dict(await bulk.execute_returning(batch.conn, batch.statements.upsert_incidents, rows))
    for incident_id, members in by_incident.items():
        if incident_id not in counts:
            # The group's incident was resolved while Redis still pointed at it.
            await _reopen_elsewhere(batch, incident_id, members)
            continue
        created = counts[incident_id] == len(members)
        _account(batch, incident_id, members, created, initial.get(members[0].alert.service_id))


async def _reopen_elsewhere(batch: Batch, stale_incident_id: str, members: list[Slot]) -> None:
    """Redis named an incident resolved meanwhile: its alerts open a fresh one, and Redis is repaired."""
    fresh_id = members[0].fallback_incident_id
    ids = [s.alert_id for s in members]
    await batch.conn.execute(
        update(Alert).where(Alert.id.in_(ids)).values(incident_id=fresh_id, state=AlertState.TRIGGERED.value)
    )
    first = members[0].alert
    await batch.conn.execute(
        insert(Incident).values(
            id=fresh_id,
            tenant_id=first.tenant_id,
            service_id=first.service_id,
            title=first.event.title,
            severity=int(first.event.severity),
            status=IncidentStatus.TRIGGERED.value,
            source=first.event.source,
            source_ref=first.event.source_ref,
            dedup_key=first.event.dedup_key,
            description=first.event.description,
            details=first.event.details,
            alert_count=len(members),
            created_at=batch.now,
            updated_at=batch.now,
            last_alert_at=max(s.alert.received_at for s in members),
            escalation_due_at=batch.now,
        )
    )
    for slot in members:
        a = slot.alert
        batch.repairs.append(
            Repair(
                a.service_id,
                int(a.event.severity),
                a.event.dedup_key,
                stale_incident_id,
                fresh_id,
                window=True,
            )
        )
    _account(batch, fresh_id, members, created=True)


def _account(
    batch: Batch, incident_id: str, members: list[Slot], created: bool, initial: InitialState | None = None
) -> None:
    """Answer the members and write the timeline: a created incident's first alert triggered it."""
    grouped = members
    if created:
        opener = members[0]
        last_alert_at = max(s.alert.received_at for s in members)
        a, e = opener.alert, opener.alert.event
        facts = IncidentFacts(
            a.tenant_id,
            incident_id,
            a.service_id,
            "",
            e.title,
            int(e.severity),
            IncidentStatus.TRIGGERED.value,
            e.description,
            e.source,
            e.source_ref,
            e.details,
        )
        batch.created.append(
            NewIncident(incident_id, a.tenant_id, a.service_id, last_alert_at, facts, initial)
        )
        opener.result = IngestResult(
            Outcome.CREATED, opener.alert_id, incident_id, opener.alert.event.dedup_key or ""
        )
        batch.record(
            opener,
            incident_id,
            "triggered",
            opener.alert.event.title,
            {"alert_id": opener.alert_id},
        )
        grouped = members[1:]
    for slot in grouped:
        slot.result = IngestResult(
            Outcome.GROUPED, slot.alert_id, incident_id, slot.alert.event.dedup_key or ""
        )
    if grouped:
        batch.record(
            grouped[0],
            incident_id,
            "alert_grouped",
            f"{len(grouped)} alert(s) grouped",
            {"count": str(len(grouped)), "alert_id": grouped[0].alert_id},
        )
