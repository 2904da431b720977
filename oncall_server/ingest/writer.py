"""The group-commit writer: many requests' alerts, one transaction.

Requests hand their alerts to :meth:`GroupCommitWriter.submit` and wait. One
task per process takes everything queued (up to ``batch_size`` alerts), asks
Redis for every dedup/grouping decision in one pipelined round trip, writes
the whole batch with a handful of Core statements in one transaction, and
only then answers each caller. While a batch commits the next one queues, so
batches grow with load and latency stays one commit at low load.

SQL is the arbiter. Alerts are upserted on ``(service_id, open_dedup_key)``
and incidents on their primary key, so when Redis is stale or empty the
database still keeps one open alert per key and never loses an alert; the
writer then points Redis back at what SQL committed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from prometheus_client import Histogram
from sqlalchemy import bindparam, delete, func, insert, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from oncall_server import failures
from oncall_server.clock import Clock, to_millis
from oncall_server.errors import InvalidArgument, OncallError, Unavailable
from oncall_server.ids import uuid7
from oncall_server.incidents.changes import Change, ChangeFeed
from oncall_server.incidents.model import AlertState, IncidentFacts, IncidentStatus
from oncall_server.ingest.coordination import Coordinator, Decision, DecisionRequest, GroupWindow, Repair
from oncall_server.ingest.model import IngestResult, Outcome, PreparedAlert
from oncall_server.ingest.rides import Ride, RideSource
from oncall_server.ingest.windows import MaintenanceWindows
from oncall_server.storage import bulk
from oncall_server.storage.engine import write_lock
from oncall_server.storage.models import Alert, AlertDelivery, Incident, TimelineEntry

log = logging.getLogger(__name__)

# What an operator needs to see why ingest is slow: small batches mean the per-commit cost dominates.
BATCH_ALERTS = Histogram(
    "oncall_ingest_batch_alerts",
    "Alerts per group commit of the ingest writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_SECONDS = Histogram(
    "oncall_ingest_batch_seconds",
    "Time from taking a committed batch to answering its callers (Redis, transaction, post-commit work).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)

MAX_DELIVERIES_PER_ALERT = 20
# The longest a ride's owner waits for an ingest transaction before writing alone.
_RIDE_WAIT_SECONDS = 2.0
_MAX_ATTEMPTS = 4
# Redis losing its state again while we reload it, this many times in a row, fails the batch (503: retry).
_MAX_RELOADS = 5


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
class _Request:
    alerts: Sequence[PreparedAlert]
    future: asyncio.Future[list[IngestResult]]


@dataclass(slots=True)
class _Slot:
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


class GroupCommitWriter:
    """Owns the ingest transaction of one process."""

    def __init__(
        self,
        engine: AsyncEngine,
        coordinator: Coordinator,
        clock: Clock,
        *,
        batch_size: int = 500,
        linger_seconds: float = 0.0,
        changes: ChangeFeed | None = None,
        escalations: EscalationStarter | None = None,
    ) -> None:
        self.engine = engine
        self.coordinator = coordinator
        self.clock = clock
        self.batch_size = batch_size
        # Quick commits (PostgreSQL, an alert storm) make small batches that each pay the per-commit
        # CPU; while requests queue up, waiting until this long after the last batch started
        # makes fewer, larger ones (docs/performance.md). 0: take the next batch at once.
        self.linger_seconds = linger_seconds
        self.changes = changes
        self.escalations = escalations
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._dialect = engine.dialect.name
        self.windows = MaintenanceWindows(engine)
        self.batches_committed = 0
        self.rides_carried = 0
        self.rides: RideSource | None = None  # writes to carry in each transaction (page outcomes)
        self._boarding = False  # a batch is running and has not reached its take point yet
        self._ride_slot: asyncio.Future[bool] | None = None  # resolved when the next take's transaction ends

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Finish everything already submitted, then stop; later submits are refused."""
        if self._task is None:
            return
        self._stopping = True
        await self._queue.put(None)
        await self._task
        self._task = None
        self._no_ride()

    def will_carry(self) -> bool:
        """See :class:`~oncall_server.ingest.rides.Carrier`."""
        return self._task is not None and (self._boarding or not self._queue.empty())

    async def carried(self) -> bool:
        """See :class:`~oncall_server.ingest.rides.Carrier`."""
        if self._ride_slot is None:
            self._ride_slot = asyncio.get_running_loop().create_future()
        try:  # a batch stuck on Redis or the database must not hold the outcomes until leases end
            return await asyncio.wait_for(asyncio.shield(self._ride_slot), _RIDE_WAIT_SECONDS)
        except TimeoutError:
            return False

    def _no_ride(self) -> None:
        """No take point is coming for those waiting on the current slot."""
        slot, self._ride_slot = self._ride_slot, None
        _answer(slot, False)

    async def submit(self, alerts: Sequence[PreparedAlert]) -> list[IngestResult]:
        """Store alerts; returns after they are committed, one result per alert in order."""
        if not alerts:
            return []
        if self._task is None or self._stopping:  # behind the stop marker nothing would answer it
            raise Unavailable("the ingest writer is not running")
        future: asyncio.Future[list[IngestResult]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(alerts, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        busy = False  # requests were waiting when the last batch finished
        last_started = 0.0
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            if busy and self.linger_seconds:
                wait = last_started + self.linger_seconds - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            last_started = time.monotonic()
            requests = [first]
            count = len(first.alerts)
            while count < self.batch_size and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                requests.append(nxt)
                count += len(nxt.alerts)
            await self._process(requests)
            busy = not self._queue.empty()

    async def _process(self, requests: list[_Request]) -> None:
        started_at = time.perf_counter()
        slots = [_Slot(alert) for req in requests for alert in req.alerts]
        BATCH_ALERTS.observe(len(slots))
        self._boarding = True
        written: tuple[list[Change], StartedEscalations | None] | Exception
        try:
            written = await self._write(slots)
        except Exception as exc:  # every caller must hear back, whatever failed
            written = exc
        finally:
            if self._boarding:  # ended (failed, cancelled) before its take point: riders must not wait on
                self._boarding = False
                self._no_ride()
        if isinstance(written, Exception):
            await self._failed(requests, written)
            return
        changes, started = written
        self.batches_committed += 1
        # Before answering: a caller that heard "accepted" can count on the next step being scheduled.
        try:
            if started is not None and self.escalations is not None:
                await self.escalations.escalations_started(started)
        except Exception:  # SQL holds the next step; the scheduler's sweep picks it up
            log.exception("post-commit work of an ingest batch failed")
        if self.changes is not None:
            self.changes.publish(changes)
        position = 0
        for req in requests:
            results = [slot.result for slot in slots[position : position + len(req.alerts)]]
            position += len(req.alerts)
            if not req.future.done():
                req.future.set_result([r for r in results if r is not None])
        BATCH_SECONDS.observe(time.perf_counter() - started_at)

    async def _failed(self, requests: list[_Request], exc: Exception) -> None:
        """A batch did not commit: isolate the request at fault, or tell every caller why.

        An outage, or a transient failure that outlasted the retries, is every caller's (503). Anything
        else may be one request's: an alert the database refuses (a constraint, a value it cannot
        hold) must not fail its neighbours, so the batch is written again in halves until the
        requests that can commit have, and the offender fails alone. The failed attempt's Redis
        decisions stay behind, as after a crash before commit: SQL arbitrates and the writer
        points Redis back at what it committed.
        """
        if len(requests) > 1 and not isinstance(exc, OncallError) and _may_be_one_request(exc):
            log.warning(
                "ingest batch of %d requests failed (%s); writing it again in halves",
                len(requests),
                _describe(exc),
            )
            half = len(requests) // 2
            await self._process(requests[:half])
            await self._process(requests[half:])
            return
        error = _caller_error(exc)
        if isinstance(error, InvalidArgument):
            log.warning("the database refused an ingest request (%s)", _describe(exc))
        else:
            log.error(
                "ingest batch of %d alerts failed",
                sum(len(r.alerts) for r in requests),
                exc_info=exc,
            )
        for req in requests:
            if not req.future.done():
                req.future.set_exception(error)

    async def _write(self, slots: list[_Slot]) -> tuple[list[Change], StartedEscalations | None]:
        earliest = min(s.alert.received_at for s in slots)
        await self.windows.refresh({s.alert.service_id for s in slots}, earliest)
        self._suppress(slots)
        await self._decide(slots, earliest)
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            ride: Ride | None = None
            slot: asyncio.Future[bool] | None = None
            try:
                async with write_lock(self.engine), self.engine.begin() as conn:
                    batch = _Batch(conn, self._dialect, self.clock.now(), self.escalations)
                    await batch.write(slots)
                    if self._boarding:  # the take point (a retry after it carries nothing)
                        ride, slot = self._take_ride()
                        if ride is not None:
                            await bulk.execute_all(conn, ride.writes)
            except BaseException as exc:
                if ride is not None:
                    ride.settle(exc)
                _answer(slot, False)
                # A failure with a ride aboard may be the ride's: try once more without it.
                if not isinstance(exc, Exception) or attempt == _MAX_ATTEMPTS:
                    raise
                if ride is None and not failures.is_transient(exc):
                    raise
                log.warning("ingest batch failed (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(0.01 * attempt)
                continue
            if ride is not None:
                ride.settle(None)
                self.rides_carried += 1
            _answer(slot, ride is not None)
            break
        try:
            await self.coordinator.repair(batch.repairs)
        except Exception:  # SQL is committed; the next batch's upserts correct Redis again
            log.exception("could not repair Redis after a batch")
        changes = list(batch.touched.values())
        if batch.started is not None:
            changes.extend(batch.started.changes)
        return changes, batch.started

    def _take_ride(self) -> tuple[Ride | None, asyncio.Future[bool] | None]:
        """At the take point, just before the commit: the ride, and the slot on which those who
        waited for it hear how it went (later waiters get the next batch's slot)."""
        self._boarding = False
        slot, self._ride_slot = self._ride_slot, None
        return (self.rides.take_ride() if self.rides is not None else None), slot

    def _suppress(self, slots: Iterable[_Slot]) -> None:
        for slot in slots:
            slot.suppressed = self.windows.covers(slot.alert.service_id, slot.alert.received_at)

    async def _decide(self, slots: list[_Slot], earliest: datetime) -> None:
        """Redis's decision for every alert that is neither suppressed nor record-only.

        Every service of the batch is in the call, so the windows that suppressed its alerts are
        checked even when none is left to decide; a service refused for stale windows is
        suppressed again from a new read, one whose Redis state is gone is reloaded, and both are
        asked again.
        """
        unsettled = {s.alert.service_id for s in slots}
        for _ in range(_MAX_RELOADS):
            pending = [
                s
                for s in slots
                if s.alert.service_id in unsettled and not s.suppressed and not s.alert.event.record_only
            ]
            decisions, verdicts = await self.coordinator.decide(
                [
                    DecisionRequest(
                        s.alert.service_id,
                        int(s.alert.event.severity),
                        s.alert.event.dedup_key,
                        s.fallback_incident_id,
                        s.alert.grouping_window_ms,
                        to_millis(s.alert.received_at),
                    )
                    for s in pending
                ],
                {service_id: self.windows.token(service_id) for service_id in unsettled},
            )
            for slot, decision in zip(pending, decisions, strict=True):
                slot.decision = decision
            stale: dict[str, str] = {}
            for service_id, verdict in verdicts.items():
                if verdict.status == "ok":
                    self.windows.confirm(service_id, verdict.windows_token)
                elif verdict.status == "windows":
                    stale[service_id] = verdict.windows_token
                else:
                    await self._reload_service(service_id, slots)
            if stale:
                await self.windows.read(stale, earliest)
                self._suppress(s for s in slots if s.alert.service_id in stale)
            unsettled = {service_id for service_id, verdict in verdicts.items() if verdict.status != "ok"}
            if not unsettled:
                return
        raise Unavailable("Redis keeps losing its state, or maintenance windows keep changing; retry")

    async def _reload_service(self, service_id: str, slots: list[_Slot]) -> None:
        """Rebuild a service's grouping windows from SQL after Redis lost them (the window length
        from any of the batch's alerts for it: suppressed ones carry it too)."""
        window_ms = max(
            (s.alert.grouping_window_ms for s in slots if s.alert.service_id == service_id), default=0
        )
        windows: list[GroupWindow] = []
        if window_ms > 0:
            now = self.clock.now()
            cutoff = now - timedelta(milliseconds=window_ms)
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(Incident.severity, Incident.id, Incident.last_alert_at)
                        .where(
                            Incident.service_id == service_id,
                            Incident.status != IncidentStatus.RESOLVED,
                            Incident.last_alert_at >= cutoff,
                        )
                        .order_by(Incident.last_alert_at.desc())
                    )
                ).all()
            seen: set[int] = set()
            for severity, incident_id, last_alert_at in rows:
                if severity in seen:
                    continue
                seen.add(severity)
                windows.append(GroupWindow(severity, incident_id, to_millis(last_alert_at) + window_ms))
        log.warning(
            "Redis had no state for service %s; reloaded %d grouping windows from SQL",
            service_id,
            len(windows),
        )
        await self.coordinator.load(service_id, windows)


def _answer(slot: asyncio.Future[bool] | None, carried: bool) -> None:
    if slot is not None and not slot.done():
        slot.set_result(carried)


def _result_alert_id(slot: _Slot) -> str:
    return slot.result.alert_id if slot.result else slot.alert_id


def _may_be_one_request(exc: Exception) -> bool:
    """Neither an outage nor a transient failure: the cause may be one request of the batch."""
    return not failures.is_outage(exc) and not failures.is_transient(exc)


def _caller_error(exc: Exception) -> OncallError:
    """What the callers of a batch that failed hear (internals go to the log only)."""
    if isinstance(exc, OncallError):
        return exc
    if failures.is_refusal(exc):
        return InvalidArgument(
            "the database refused this alert (a value or reference it cannot store); nothing of "
            "this request was stored"
        )
    return failures.as_unavailable(exc) or Unavailable("alert storage is unavailable; retry")


def _describe(exc: BaseException) -> str:
    """One line naming a database error without the statement and its parameters."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first}"[:300]


class _Stored(NamedTuple):
    """What the alert upsert returned for one dedup key: the open alert it inserted or merged into."""

    id: str
    incident_id: str
    occurrence_count: int


@dataclass(slots=True)
class _AlertGroup:
    """Slots that share a dedup key within one batch: one upsert row."""

    slots: list[_Slot]

    @property
    def head(self) -> _Slot:
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


class _Batch:
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

    async def write(self, slots: list[_Slot]) -> None:
        for slot in slots:
            slot.result = None
        await self._write_unpaged(slots)
        keyed: dict[tuple[str, str], _AlertGroup] = {}
        keyless: list[_Slot] = []
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

    def _alert_row(self, slot: _Slot, incident_id: str | None, state: AlertState) -> dict[str, Any]:
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

    async def _write_unpaged(self, slots: list[_Slot]) -> None:
        """Suppressed (maintenance) and record-only alerts: stored, no incident, no page."""
        unpaged = [s for s in slots if s.suppressed or s.alert.event.record_only]
        for slot in unpaged:
            outcome = Outcome.SUPPRESSED if slot.suppressed else Outcome.RECORDED
            slot.result = IngestResult(outcome, slot.alert_id, "", slot.alert.event.dedup_key or "")
        if unpaged:
            rows = [self._alert_row(s, None, AlertState.SUPPRESSED) for s in unpaged]
            await self._insert_once(unpaged, rows)

    def _target_incident(self, slot: _Slot) -> tuple[str, AlertState]:
        """The incident a newly inserted alert joins, per the Redis decision."""
        assert slot.decision is not None
        if slot.decision.outcome == "grouped":
            return slot.decision.incident_id, AlertState.GROUPED
        if slot.decision.outcome == "new":
            return slot.decision.incident_id, AlertState.TRIGGERED
        # Redis said "duplicate" but SQL has no open alert for the key: Redis was stale.
        return slot.fallback_incident_id, AlertState.TRIGGERED

    async def _upsert_keyed(self, groups: dict[tuple[str, str], _AlertGroup]) -> list[_Slot]:
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
        inserted: list[_Slot] = []
        delivery_rows: list[dict[str, Any]] = []
        prune: list[str] = []
        merged_per_incident: dict[str, list[_Slot]] = defaultdict(list)
        for group in ordered:
            head = group.head
            row = returned[(head.alert.service_id, head.alert.event.dedup_key)]
            merges: list[_Slot] = group.slots
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

    def _repair_if_stale(self, slot: _Slot, committed_incident_id: str) -> None:
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

    async def _insert_keyless(self, slots: list[_Slot]) -> list[_Slot]:
        """Alerts without a dedup key: always new, unless a retry repeats an idempotency key."""
        if not slots:
            return []
        return await self._insert_once(slots, [self._alert_row(s, *self._target_incident(s)) for s in slots])

    async def _insert_once(self, slots: list[_Slot], rows: list[dict[str, Any]]) -> list[_Slot]:
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

    async def _open_incidents(self, inserted: list[_Slot]) -> None:
        """Create or extend the incidents that newly inserted alerts belong to."""
        if not inserted:
            return
        by_incident: dict[str, list[_Slot]] = defaultdict(list)
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

    async def _reopen_elsewhere(self, stale_incident_id: str, members: list[_Slot]) -> None:
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
        self, incident_id: str, members: list[_Slot], created: bool, initial: InitialState | None = None
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
        slot: _Slot,
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
