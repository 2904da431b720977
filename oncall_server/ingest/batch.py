"""What one ingest transaction writes: a batch's alerts, incidents and timeline rows, in SQL.

Alerts are upserted on ``(service_id, open_dedup_key)`` and incidents on their primary key, so
when Redis is stale or empty the database still keeps one open alert per key and never loses an
alert; the batch collects the repairs that point Redis back at what SQL committed.

Here: the alerts, and the order of one batch's writes. The incidents they open or join are in
:mod:`~oncall_server.ingest.incident_grouping`, the upserts per dialect in
:mod:`~oncall_server.ingest.batch_statements`, and what the escalation scheduler is told of new
incidents in :mod:`~oncall_server.ingest.new_incidents`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from oncall_server.ids import uuid7
from oncall_server.incidents.changes import Change
from oncall_server.incidents.model import AlertState
from oncall_server.ingest.batch_statements import MAX_DELIVERIES_PER_ALERT, PRUNE_DELIVERIES, statements
from oncall_server.ingest.coordination import Decision, Repair
from oncall_server.ingest.incident_grouping import open_incidents
from oncall_server.ingest.model import IngestResult, Outcome, PreparedAlert
from oncall_server.ingest.new_incidents import (
    EscalationStarter,
    InitialState,
    NewIncident,
    StartedEscalations,
)
from oncall_server.storage import bulk
from oncall_server.storage.models import Alert, AlertDelivery, TimelineEntry

# Imported from here by the writer and the escalation scheduler.
__all__ = [
    "MAX_DELIVERIES_PER_ALERT",
    "Batch",
    "EscalationStarter",
    "InitialState",
    "NewIncident",
    "Slot",
    "StartedEscalations",
]


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


class Batch:
    """The SQL statements of one batch, inside one transaction."""

    def __init__(
        self, conn: AsyncConnection, dialect: str, now: datetime, escalations: EscalationStarter | None
    ) -> None:
        self.conn = conn
        self.dialect = dialect
        self.statements = statements(dialect)
        self.now = now
        self.escalations = escalations
        self.timeline: list[dict[str, Any]] = []
        self.repairs: list[Repair] = []
        self.touched: dict[str, Change] = {}  # per incident, its latest timeline entry
        self.created: list[NewIncident] = []
        self.started: StartedEscalations | None = None

    async def write(self, slots: list[Slot]) -> None:
        """Store the slots' alerts, open or extend their incidents, start escalations, write the
        timeline; every slot gets its result (again, when the transaction is retried)."""
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
        await open_incidents(self, inserted)
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

    def target_incident(self, slot: Slot) -> tuple[str, AlertState]:
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
            incident_id, state = self.target_incident(group.head)
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
                self.conn, self.statements.upsert_alerts, rows
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
            self.record(
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
        await self.conn.execute(PRUNE_DELIVERIES, {"alert_id": alert_id})

    async def _insert_keyless(self, slots: list[Slot]) -> list[Slot]:
        """Alerts without a dedup key: always new, unless a retry repeats an idempotency key."""
        if not slots:
            return []
        return await self._insert_once(slots, [self._alert_row(s, *self.target_incident(s)) for s in slots])

    async def _insert_once(self, slots: list[Slot], rows: list[dict[str, Any]]) -> list[Slot]:
        """Insert the slots' rows, except where a retry repeats a stored idempotency key: such a slot
        answers with the stored alert. Returns the slots inserted.

        Any key, even an empty one, is a key here (the pipeline turns an empty one into None).
        """
        if all(row["idempotency_key"] is None for row in rows):
            await bulk.insert_rows(self.conn, Alert, rows)
            return slots
        fresh = set((await self.conn.execute(self.statements.insert_idempotent, rows)).scalars().all())
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

    def record(
        self,
        slot: Slot,
        incident_id: str,
        kind: str,
        message: str,
        details: dict[str, str],
    ) -> None:
        """A timeline entry, written with the batch's last statements; published after commit."""
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
