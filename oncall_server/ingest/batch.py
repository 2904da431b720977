"""What one ingest transaction writes: a batch's alerts, incidents and timeline rows, in SQL.

Alerts are upserted on ``(service_id, open_dedup_key)`` and incidents on their primary key, so
when Redis is stale or empty the database still keeps one open alert per key and never loses an
alert; the batch collects the repairs that point Redis back at what SQL committed.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import bindparam, delete, func, insert, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from oncall_server.errors import Unavailable
from oncall_server.ids import uuid7
from oncall_server.incidents.changes import Change
from oncall_server.incidents.model import AlertState, IncidentFacts, IncidentStatus
from oncall_server.ingest.coordination import Decision, Repair
from oncall_server.ingest.model import IngestResult, Outcome, PreparedAlert
from oncall_server.storage import bulk
from oncall_server.storage.models import Alert, AlertDelivery, Incident, TimelineEntry

MAX_DELIVERIES_PER_ALERT = 20


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


# An alert keeps its newest MAX_DELIVERIES_PER_ALERT deliveries (a storm merges into one alert).
_PRUNE_DELIVERIES = delete(AlertDelivery).where(
    AlertDelivery.alert_id == bindparam("alert_id"),
    AlertDelivery.id
    < select(AlertDelivery.id)
    .where(AlertDelivery.alert_id == bindparam("alert_id"))
    .order_by(AlertDelivery.id.desc())
    .offset(MAX_DELIVERIES_PER_ALERT - 1)
    .limit(1)
    .scalar_subquery(),
)


@dataclass(slots=True)
class Slot:
    """One alert of the batch and what becomes of it.

    ``alert_id`` is the id this alert gets if it is inserted; it never changes,
    so a retried transaction tells "inserted" from "merged" the same way.
    """

    alert: PreparedAlert
    alert_id: str = field(default_factory=uuid7)
    fallback_incident_id: str = field(default_factory=uuid7)
    decision: Decision | None = None
    suppressed: bool = False
    result: IngestResult | None = None


def _result_alert_id(slot: Slot) -> str:
    return slot.result.alert_id if slot.result else slot.alert_id


class _Stored(NamedTuple):
    """What the alert upsert returned for one dedup key: the open alert it inserted or merged into."""

    id: str
    incident_id: str
    occurrence_count: int


@dataclass(slots=True)
class _AlertGroup:
    """Slots that share a dedup key within one batch: one upsert row."""

    slots: list[Slot]

    @property
    def head(self) -> Slot:
        return self.slots[0]


@dataclass(frozen=True, slots=True)
class _Statements:
    """The writer's upserts, built once per dialect so SQLAlchemy caches their compiled form.

    They run as executemany with a list of rows: SQLAlchemy's insertmanyvalues
    turns that into multi-row INSERTs with RETURNING, without building a new
    500-row statement (and compiling it) for every batch.
    """

    upsert_alerts: Any
    upsert_incidents: Any
    insert_idempotent: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    if dialect == "postgresql":
        dialect_insert: Any = postgresql.insert
    elif dialect == "sqlite":
        dialect_insert = sqlite.insert
    else:
        raise Unavailable(f"unsupported database dialect {dialect}")
    alerts = dialect_insert(Alert)
    upsert_alerts = alerts.on_conflict_do_update(
        index_elements=[Alert.service_id, Alert.open_dedup_key],
        set_={
            "occurrence_count": Alert.occurrence_count + alerts.excluded.occurrence_count,
            "last_seen_at": alerts.excluded.last_seen_at,
            "latest_raw_payload": func.coalesce(
                alerts.excluded.latest_raw_payload, alerts.excluded.raw_payload
            ),
        },
    ).returning(Alert.id, Alert.service_id, Alert.open_dedup_key, Alert.incident_id, Alert.occurrence_count)
    incidents = dialect_insert(Incident)
    upsert_incidents = incidents.on_conflict_do_update(
        index_elements=[Incident.id],
        set_={
            "alert_count": Incident.alert_count + incidents.excluded.alert_count,
            "last_alert_at": incidents.excluded.last_alert_at,
            "updated_at": incidents.excluded.updated_at,
        },
        where=Incident.status != IncidentStatus.RESOLVED.value,
    ).returning(Incident.id, Incident.alert_count)
    insert_idempotent = (
        dialect_insert(Alert)
        .on_conflict_do_nothing(index_elements=[Alert.integration_id, Alert.idempotency_key])
        .returning(Alert.id)
    )
    return _Statements(upsert_alerts, upsert_incidents, insert_idempotent)


class Batch:
    """The SQL statements of one batch, inside one transaction."""

    def __init__(
        self, conn: AsyncConnection, dialect: str, now: datetime, escalations: EscalationStarter | None
    ) -> None:
        self.conn = conn
        self.dialect = dialect
        self.now = now
        self.escalations = escalations
        self.timeline: list[dict[str, Any]] = []
        self.repairs: list[Repair] = []
        self.touched: dict[str, Change] = {}  # per incident, its latest timeline entry
        self.created: list[NewIncident] = []
        self.started: StartedEscalations | None = None

    async def write(self, slots: list[Slot]) -> None:
        for slot in slots:
            slot.result = None
        await self._write_unpaged(slots)
        keyed: dict[tuple[str, str], _AlertGroup] = {}
        keyless: list[Slot] = []
        for slot in slots:
            if slot.suppressed or slot.alert.event.record_only:
                continue
            key = slot.alert.event.dedup_key
            if key is None:
                keyless.append(slot)
            elif (slot.alert.service_id, key) in keyed:
                keyed[(slot.alert.service_id, key)].slots.append(slot)
            else:
                keyed[(slot.alert.service_id, key)] = _AlertGroup([slot])
        inserted = await self._upsert_keyed(keyed)
        inserted += await self._insert_keyless(keyless)
        await self._open_incidents(inserted)
        writes: bulk.Writes = []
        if self.created and self.escalations is not None:
            self.started = await self.escalations.start_in_transaction(self.conn, self.created, self.now)
            self.timeline.extend(self.started.entries)
            writes = self.started.writes
        await bulk.execute_all(self.conn, [*writes, (bulk.insert_into(TimelineEntry), self.timeline)])

    def _alert_row(self, slot: Slot, incident_id: str | None, state: AlertState) -> dict[str, Any]:
        a, e = slot.alert, slot.alert.event
        open_key = e.dedup_key if state in (AlertState.TRIGGERED, AlertState.GROUPED) else None
        return {
            "id": slot.alert_id,
            "tenant_id": a.tenant_id,
            "service_id": a.service_id,
            "integration_id": a.integration_id,
            "incident_id": incident_id,
            "dedup_key": e.dedup_key,
            "open_dedup_key": open_key,
            "idempotency_key": a.idempotency_key,
            "title": e.title,
            "severity": int(e.severity),
            "state": state.value,
            "source": e.source,
            "source_ref": e.source_ref,
            "description": e.description,
            "details": e.details,
            "occurrence_count": 1,
            "first_seen_at": a.received_at,
            "last_seen_at": a.received_at,
            "raw_payload": e.raw_payload,
            "latest_raw_payload": None,
            "resolved_at": None,
        }

    async def _write_unpaged(self, slots: list[Slot]) -> None:
        """Suppressed (maintenance) and record-only alerts: stored, no incident, no page."""
        unpaged = [s for s in slots if s.suppressed or s.alert.event.record_only]
        for slot in unpaged:
            outcome = Outcome.SUPPRESSED if slot.suppressed else Outcome.RECORDED
            slot.result = IngestResult(outcome, slot.alert_id, "", slot.alert.event.dedup_key or "")
        if unpaged:
            rows = [self._alert_row(s, None, AlertState.SUPPRESSED) for s in unpaged]
            await self._insert_once(unpaged, rows)

    def _target_incident(self, slot: Slot) -> tuple[str, AlertState]:
        """The incident a newly inserted alert joins, per the Redis decision."""
        assert slot.decision is not None
        if slot.decision.outcome == "grouped":
            return slot.decision.incident_id, AlertState.GROUPED
        if slot.decision.outcome == "new":
            return slot.decision.incident_id, AlertState.TRIGGERED
        # Redis said "duplicate" but SQL has no open alert for the key: Redis was stale.
        return slot.fallback_incident_id, AlertState.TRIGGERED

    async def _upsert_keyed(self, groups: dict[tuple[str, str], _AlertGroup]) -> list[Slot]:
        """Insert-or-merge one row per (service, dedup key); returns the slots that inserted."""
        if not groups:
            return []
        ordered = sorted(
            groups.values(), key=lambda g: (g.head.alert.service_id, g.head.alert.event.dedup_key or "")
        )
        rows = []
        for group in ordered:
            incident_id, state = self._target_incident(group.head)
            values = self._alert_row(group.head, incident_id, state)
            if len(group.slots) > 1:
                last = group.slots[-1].alert
                values["occurrence_count"] = len(group.slots)
                values["last_seen_at"] = max(s.alert.received_at for s in group.slots)
                values["latest_raw_payload"] = last.event.raw_payload
            rows.append(values)
        returned = {
            (service_id, open_key): _Stored(alert_id, incident_id, occurrences)
            for alert_id, service_id, open_key, incident_id, occurrences in await bulk.execute_returning(
                self.conn, _statements(self.dialect).upsert_alerts, rows
            )
        }
        inserted: list[Slot] = []
        delivery_rows: list[dict[str, Any]] = []
        prune: list[str] = []
        merged_per_incident: dict[str, list[Slot]] = defaultdict(list)
        for group in ordered:
            head = group.head
            row = returned[(head.alert.service_id, head.alert.event.dedup_key)]
            merges: list[Slot] = group.slots
            if row.id == head.alert_id:
                inserted.append(head)
                merges = group.slots[1:]
            else:
                self._repair_if_stale(head, row.incident_id)
            for slot in merges:
                key = slot.alert.event.dedup_key or ""
                slot.result = IngestResult(Outcome.DEDUPLICATED, row.id, row.incident_id, key)
                merged_per_incident[row.incident_id].append(slot)
            for slot in merges[-MAX_DELIVERIES_PER_ALERT:]:
                delivery_rows.append(
                    {
                        "alert_id": row.id,
                        "received_at": slot.alert.received_at,
                        "raw_payload": slot.alert.event.raw_payload,
                    }
                )
            if merges and row.occurrence_count > MAX_DELIVERIES_PER_ALERT:
                prune.append(row.id)
        if delivery_rows:
            await bulk.insert_rows(self.conn, AlertDelivery, delivery_rows)
        for alert_id in prune:
            await self._prune_deliveries(alert_id)
        for incident_id, merged in merged_per_incident.items():
            self._record(
                merged[0],
                incident_id,
                "alert_merged",
                f"{len(merged)} duplicate alert(s) merged",
                {"count": str(len(merged)), "alert_id": _result_alert_id(merged[0])},
            )
        return inserted

    def _repair_if_stale(self, slot: Slot, committed_incident_id: str) -> None:
        assert slot.decision is not None
        believed = slot.decision.incident_id
        if believed != committed_incident_id:
            a = slot.alert
            self.repairs.append(
                Repair(
                    a.service_id, int(a.event.severity), a.event.dedup_key, believed, committed_incident_id
                )
            )

    async def _prune_deliveries(self, alert_id: str) -> None:
        await self.conn.execute(_PRUNE_DELIVERIES, {"alert_id": alert_id})

    async def _insert_keyless(self, slots: list[Slot]) -> list[Slot]:
        """Alerts without a dedup key: always new, unless a retry repeats an idempotency key."""
        if not slots:
            return []
        return await self._insert_once(slots, [self._alert_row(s, *self._target_incident(s)) for s in slots])

    async def _insert_once(self, slots: list[Slot], rows: list[dict[str, Any]]) -> list[Slot]:
        """Insert the slots' rows, except where a retry repeats a stored idempotency key: such a slot
        answers with the stored alert. Returns the slots inserted.

        Any key, even an empty one, is a key here (the pipeline turns an empty one into None).
        """
        if all(row["idempotency_key"] is None for row in rows):
            await bulk.insert_rows(self.conn, Alert, rows)
            return slots
        fresh = set(
            (await self.conn.execute(_statements(self.dialect).insert_idempotent, rows)).scalars().all()
        )
        inserted = [s for s in slots if s.alert_id in fresh]
        repeats = [s for s in slots if s.alert_id not in fresh]
        if repeats:
            existing = {
                (r.integration_id, r.idempotency_key): r
                for r in (
                    await self.conn.execute(
                        select(
                            Alert.id, Alert.integration_id, Alert.idempotency_key, Alert.incident_id
                        ).where(Alert.idempotency_key.in_({s.alert.idempotency_key for s in repeats}))
                    )
                ).all()
            }
            for slot in repeats:
                row = existing[(slot.alert.integration_id, slot.alert.idempotency_key)]
                slot.result = IngestResult(Outcome.DEDUPLICATED, row.id, row.incident_id or "", "")
        return inserted

    async def _open_incidents(self, inserted: list[Slot]) -> None:
        """Create or extend the incidents that newly inserted alerts belong to."""
        if not inserted:
            return
        by_incident: dict[str, list[Slot]] = defaultdict(list)
        opening: set[str] = set()  # services of the incidents this batch may create
        for slot in inserted:
            incident_id, alert_state = self._target_incident(slot)
            by_incident[incident_id].append(slot)
            if alert_state is AlertState.TRIGGERED:
                opening.add(slot.alert.service_id)
        # Inserted with the state tier 1's page moves them to: no update of the new row after it.
        initial: Mapping[str, InitialState] = {}
        if self.escalations is not None and opening:
            initial = await self.escalations.initial_escalations(self.conn, opening, self.now)
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
                    "created_at": self.now,
                    "updated_at": self.now,
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
                    "escalation_due_at": state.due_at if state else self.now,
                }
            )
        counts = dict(
            await bulk.execute_returning(self.conn, _statements(self.dialect).upsert_incidents, rows)
        )
        for incident_id, members in by_incident.items():
            if incident_id not in counts:
                # The group's incident was resolved while Redis still pointed at it.
                await self._reopen_elsewhere(incident_id, members)
                continue
            created = counts[incident_id] == len(members)
            self._account(incident_id, members, created, initial.get(members[0].alert.service_id))

    async def _reopen_elsewhere(self, stale_incident_id: str, members: list[Slot]) -> None:
        fresh_id = members[0].fallback_incident_id
        ids = [s.alert_id for s in members]
        await self.conn.execute(
            update(Alert)
            .where(Alert.id.in_(ids))
            .values(incident_id=fresh_id, state=AlertState.TRIGGERED.value)
        )
        first = members[0].alert
        await self.conn.execute(
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
                created_at=self.now,
                updated_at=self.now,
                last_alert_at=max(s.alert.received_at for s in members),
                escalation_due_at=self.now,
            )
        )
        for slot in members:
            a = slot.alert
            self.repairs.append(
                Repair(
                    a.service_id,
                    int(a.event.severity),
                    a.event.dedup_key,
                    stale_incident_id,
                    fresh_id,
                    window=True,
                )
            )
        self._account(fresh_id, members, created=True)

    def _account(
        self, incident_id: str, members: list[Slot], created: bool, initial: InitialState | None = None
    ) -> None:
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
            self.created.append(
                NewIncident(incident_id, a.tenant_id, a.service_id, last_alert_at, facts, initial)
            )
            opener.result = IngestResult(
                Outcome.CREATED, opener.alert_id, incident_id, opener.alert.event.dedup_key or ""
            )
            self._record(
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
            self._record(
                grouped[0],
                incident_id,
                "alert_grouped",
                f"{len(grouped)} alert(s) grouped",
                {"count": str(len(grouped)), "alert_id": grouped[0].alert_id},
            )

    def _record(
        self,
        slot: Slot,
        incident_id: str,
        kind: str,
        message: str,
        details: dict[str, str],
    ) -> None:
        entry_id = uuid7()
        self.timeline.append(
            {
                "id": entry_id,
                "tenant_id": slot.alert.tenant_id,
                "incident_id": incident_id,
                "kind": kind,
                "actor": "system",
                "message": message,
                "details": details,
                "created_at": self.now,
            }
        )
        self.touched[incident_id] = Change(slot.alert.tenant_id, slot.alert.service_id, incident_id, entry_id)
