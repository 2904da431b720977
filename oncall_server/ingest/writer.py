"""The group-commit writer: many requests' alerts, one transaction.

Requests hand their alerts to :meth:`GroupCommitWriter.submit` and wait. One
task per process takes the next batch from the per-tenant queues (up to ``batch_size``
alerts, each waiting tenant its share: :mod:`oncall_server.ingest.fair_queue`), asks
Redis for every dedup/grouping decision in one pipelined round trip, writes
the whole batch with a handful of Core statements in one transaction, and
only then answers each caller. While a batch commits the next one queues, so
batches grow with load and latency stays one commit at low load.

SQL is the arbiter (what one transaction writes is in :mod:`oncall_server.ingest.batch`);
the writer then points Redis back at what SQL committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from prometheus_client import Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server import failures
from oncall_server.clock import Clock, to_millis
from oncall_server.errors import InvalidArgument, OncallError, Unavailable
from oncall_server.incidents.changes import Change, ChangeFeed
from oncall_server.incidents.model import IncidentStatus
from oncall_server.ingest.batch import Batch, EscalationStarter, Slot, StartedEscalations
from oncall_server.ingest.carried_writes import CarriedWrites, CarriedWritesSource, NextIngestCommit, answer
from oncall_server.ingest.coordination import Coordinator, DecisionRequest, GroupWindow
from oncall_server.ingest.fair_queue import FairQueue, QueuedRequest, QueueLimits
from oncall_server.ingest.model import IngestResult, PreparedAlert
from oncall_server.ingest.windows import MaintenanceWindows
from oncall_server.storage import bulk
from oncall_server.storage.engine import write_lock
from oncall_server.storage.models import Incident

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

_MAX_ATTEMPTS = 4
# Redis losing its state again while we reload it, this many times in a row, fails the batch (503: retry).
_MAX_RELOADS = 5


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
        next_commit: NextIngestCommit | None = None,
        carried_writes: CarriedWritesSource | None = None,
        limits: QueueLimits | None = None,
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
        self.queue = FairQueue(limits)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._dialect = engine.dialect.name
        self.windows = MaintenanceWindows(engine)
        self.batches_committed = 0
        self.carried_commits = 0  # transactions that carried writes for others
        # What owners of carried writes (page outcomes) learn of the next commit; where it takes them.
        self.next_commit = next_commit or NextIngestCommit()
        self.carried_writes = carried_writes

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")
        self.next_commit.writer_running = True

    async def stop(self) -> None:
        """Finish everything already submitted, then stop; later submits are refused."""
        if self._task is None:
            return
        self._stopping = True
        self.queue.wake()
        await self._task
        self._task = None
        self.next_commit.writer_running = False
        self.next_commit.none_coming()

    def _queue_changed(self) -> None:
        self.next_commit.requests_waiting = self.queue.has_work()

    async def submit(
        self, alerts: Sequence[PreparedAlert], *, room_wait_seconds: float | None = 0.0
    ) -> list[IngestResult]:
        """Store alerts; returns after they are committed, one result per alert in order.

        Over a queue limit the call waits up to ``room_wait_seconds`` for room (None: as long as it
        takes, for a source that keeps its own backlog: the bus), then is refused whole
        (ResourceExhausted, nothing stored).
        """
        if not alerts:
            return []
        if self._task is None or self._stopping:  # once stopping, nothing would answer it
            raise Unavailable("the ingest writer is not running")
        future: asyncio.Future[list[IngestResult]] = asyncio.get_running_loop().create_future()
        request = QueuedRequest.of(alerts, future)
        await self.queue.put(request, wait_seconds=room_wait_seconds)
        self._queue_changed()
        return await future

    async def _run(self) -> None:
        busy = False  # requests were waiting when the last batch finished
        last_started = 0.0
        while True:
            if not self.queue.has_work():
                if self._stopping and not self.queue.has_callers():  # all submitted before stop() answered
                    break
                await self.queue.wait_for_work()
                continue
            if busy and self.linger_seconds:
                wait = last_started + self.linger_seconds - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            last_started = time.monotonic()
            requests = self.queue.take_batch(self.batch_size)
            self._queue_changed()
            try:
                await self._process(requests)
            finally:
                self.queue.answered(requests, time.monotonic() - last_started)
            busy = self.queue.has_work()

    async def _process(self, requests: list[QueuedRequest]) -> None:
        started_at = time.perf_counter()
        slots = [Slot(alert) for req in requests for alert in req.alerts]
        BATCH_ALERTS.observe(len(slots))
        self.next_commit.accepting = True
        written: tuple[list[Change], StartedEscalations | None] | Exception
        try:
            written = await self._write(slots)
        except Exception as exc:  # every caller must hear back, whatever failed
            written = exc
        finally:
            if self.next_commit.accepting:  # ended (failed, cancelled) before taking carried writes:
                self.next_commit.accepting = False  # their owners must not wait on
                self.next_commit.none_coming()
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

    async def _failed(self, requests: list[QueuedRequest], exc: Exception) -> None:
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

    async def _write(self, slots: list[Slot]) -> tuple[list[Change], StartedEscalations | None]:
        earliest = min(s.alert.received_at for s in slots)
        await self.windows.refresh({s.alert.service_id for s in slots}, earliest)
        self._suppress(slots)
        await self._decide(slots, earliest)
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            carried: CarriedWrites | None = None
            waiters: asyncio.Future[bool] | None = None
            try:
                async with write_lock(self.engine), self.engine.begin() as conn:
                    batch = Batch(conn, self._dialect, self.clock.now(), self.escalations)
                    await batch.write(slots)
                    if self.next_commit.accepting:  # just before the commit (a retry carries nothing)
                        carried, waiters = self._take_carried_writes()
                        if carried is not None:
                            await bulk.execute_all(conn, carried.writes)
            except BaseException as exc:
                if carried is not None:
                    carried.settle(exc)
                answer(waiters, False)
                # A failure with carried writes may be theirs: try once more without them.
                if not isinstance(exc, Exception) or attempt == _MAX_ATTEMPTS:
                    raise
                if carried is None and not failures.is_transient(exc):
                    raise
                log.warning("ingest batch failed (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(0.01 * attempt)
                continue
            if carried is not None:
                carried.settle(None)
                self.carried_commits += 1
            answer(waiters, carried is not None)
            break
        try:
            await self.coordinator.repair(batch.repairs)
        except Exception:  # SQL is committed; the next batch's upserts correct Redis again
            log.exception("could not repair Redis after a batch")
        changes = list(batch.touched.values())
        if batch.started is not None:
            changes.extend(batch.started.changes)
        return changes, batch.started

    def _take_carried_writes(self) -> tuple[CarriedWrites | None, asyncio.Future[bool] | None]:
        """Just before the commit: the carried writes, and the future on which those who waited for
        this transaction hear how it went."""
        waiters = self.next_commit.take_waiters()
        source = self.carried_writes
        return (source.take_carried_writes() if source is not None else None), waiters

    def _suppress(self, slots: Iterable[Slot]) -> None:
        for slot in slots:
            slot.suppressed = self.windows.covers(slot.alert.service_id, slot.alert.received_at)

    async def _decide(self, slots: list[Slot], earliest: datetime) -> None:
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

    async def _reload_service(self, service_id: str, slots: list[Slot]) -> None:
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
