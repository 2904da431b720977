"""The escalation scheduler: runs due steps — page a tier, re-trigger an ack, auto-resolve.

Each step runs in one SQL transaction that first checks the incident still
expects it (same run, same step, still triggered) and then writes the outbox
rows, the timeline entry and the incident's next step together. A step run
twice (a lease expired, a rebuilt set) finds the step already advanced and
does nothing; if it got as far as the outbox, the rows' unique key stops a
second page anyway. Redis only says *when* to look; SQL says *whether*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from oncall_server.clock import Clock, to_millis
from oncall_server.configuration.rotations import Schedule, from_json, who_is_on_call
from oncall_server.ids import uuid7
from oncall_server.incidents.actions import OPEN_ALERT_STATES, Incidents
from oncall_server.incidents.changes import Change, ChangeFeed
from oncall_server.incidents.model import AlertState, IncidentFacts, IncidentStatus
from oncall_server.ingest.batch import NewIncident, StartedEscalations
from oncall_server.paging import escalation_state as state
from oncall_server.paging.due_set import DueSet
from oncall_server.paging.outbox import PAGE, LocalDispatcher, OutboxRow, PageRequest, enqueue_pages
from oncall_server.storage import bulk
from oncall_server.storage.bulk import Executor
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import (
    Alert,
    EscalationPolicy,
    Incident,
    OnCallSchedule,
    Service,
    TimelineEntry,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Outcome:
    following: list[tuple[str, int]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)  # timeline rows, inserted in one statement
    # Step moves, run by the caller with the timeline rows (one trip on SQLite): see bulk.execute_all.
    writes: list[tuple[Any, list[dict[str, Any]]]] = field(default_factory=list)
    claimed: list[OutboxRow] = field(default_factory=list)  # written claimed: this process sends them
    enqueued: bool = False  # rows left pending for a dispatcher to claim


_ESCALATING_COLUMNS = (
    Incident.id,
    Incident.tenant_id,
    Incident.service_id,
    Incident.status,
    Incident.escalation_snapshot,
    Incident.escalation_run,
    Incident.escalation_step,
    Incident.escalation_due_at,
    Incident.last_alert_at,
)


@dataclass(slots=True)
class _Escalating:
    """What a step reads of an incident and advances: plain columns, not an ORM object.

    A claim is hundreds of incidents; loading, tracking and flushing them as ORM
    objects cost more than everything else a step does.
    """

    id: str
    tenant_id: str
    service_id: str
    status: str
    snapshot: dict[str, Any] | None
    run: int
    step: int
    due_at: datetime | None
    last_alert_at: datetime
    started: bool = False  # the snapshot was taken by this step and must be written
    inserted: bool = False  # a new incident inserted with its state after tier 1: nothing to write
    facts: IncidentFacts | None = None  # the writer's incident: its pages need not be read back


_incidents = cast(Table, Incident.__table__)
_ADVANCE_VALUES: dict[str, Any] = {
    "escalation_step": bindparam("b_step"),
    "escalation_due_at": bindparam("b_due"),
}
_ADVANCE = update(_incidents).where(_incidents.c.id == bindparam("b_id")).values(**_ADVANCE_VALUES)
_START = (
    update(_incidents)
    .where(_incidents.c.id == bindparam("b_id"))
    .values(**_ADVANCE_VALUES, escalation_snapshot=bindparam("b_snapshot"))
)


# A service and its escalation policy (NULL columns without one): what a new incident freezes.
_SERVICES_WITH_POLICY = bulk.KeyedSelect(
    select(
        Service.id,
        Service.auto_resolve_seconds,
        Service.name,
        EscalationPolicy.id.label("policy_id"),
        EscalationPolicy.name.label("policy_name"),
        EscalationPolicy.repeat_count,
        EscalationPolicy.tiers,
    ).outerjoin(EscalationPolicy, EscalationPolicy.id == Service.escalation_policy_id),
    Service.id,
    "service_id",
)


def snapshot_of(service: Any) -> dict[str, Any]:
    """The policy as the incident will follow it (a ``_SERVICES_WITH_POLICY`` row); ``{}`` pages nobody."""
    if service is None or service.policy_id is None:
        return {}
    return {
        "policy_id": service.policy_id,
        "name": service.policy_name,
        "repeat_count": service.repeat_count,
        "tiers": service.tiers,
    }


def after_page(
    snapshot: dict[str, Any], step: int, due_at: datetime | None, now: datetime
) -> tuple[int, datetime | None]:
    """The step an incident moves to once the tier of ``step`` is paged, and when that one is due
    (None: nothing more to page). Shared by the scheduler and the writer's new incidents, so the
    state written with a new incident is the one its first page moves it to."""
    tiers: list[dict[str, Any]] = snapshot.get("tiers") or []
    if not tiers:
        return step, None
    following = step + 1
    if following < len(tiers) * (int(snapshot.get("repeat_count", 0)) + 1):
        delay = int(tiers[step % len(tiers)].get("delay_seconds", 0))
        return following, (due_at or now) + timedelta(seconds=delay)
    return following, None


@dataclass(frozen=True, slots=True)
class InitialEscalation:
    """A new incident's escalation state once tier 1 is paged, known before it is inserted.

    The writer inserts the incident with it instead of updating the row after the first page: that
    update touches an indexed column, so PostgreSQL writes a second version of the row and its index
    entries (docs/performance.md).
    """

    snapshot: dict[str, Any]
    step: int
    due_at: datetime | None
    service_name: str
    auto_resolve_seconds: int | None


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


class EscalationTimers:
    """When each incident's next step is due (the Redis set) and the scheduler's wake-up: shared by
    the scheduler and the incident actions that change a next step."""

    def __init__(self, due: DueSet) -> None:
        self.due = due
        self.wakeup = asyncio.Event()

    async def schedule(self, incident: Incident) -> None:
        """After an action changed the incident's next step: tell Redis (SQL already knows)."""
        member = state.pending_member(incident)
        if member is not None:
            await self.due.add([member])
            self.wakeup.set()


class Escalator:
    """Runs escalation steps for every tenant; one per process, any number of replicas."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        timers: EscalationTimers,
        clock: Clock,
        changes: ChangeFeed,
        incidents: Incidents,
        dispatcher: LocalDispatcher,
        *,
        lease_seconds: float = 10.0,
        batch_size: int = 500,
        concurrency: int = 8,
        poll_seconds: float = 0.5,
        sweep_seconds: float = 5.0,
    ) -> None:
        self.sessions = sessions
        self.due = timers.due
        self.clock = clock
        self.changes = changes
        self.incidents = incidents
        self.lease_ms = int(lease_seconds * 1000)
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds
        self._limit = asyncio.Semaphore(concurrency)
        self._wakeup = timers.wakeup
        self._dialect = sessions.kw["bind"].dialect.name
        # This process's dispatcher: pages due now are written claimed for it and handed over.
        self.dispatcher = dispatcher
        self.steps_run = 0

    def wake(self) -> None:
        self._wakeup.set()

    async def start_in_transaction(
        self, conn: AsyncConnection, created: Sequence[NewIncident], now: datetime
    ) -> StartedEscalations:
        """Tier 1 of incidents the ingest writer is creating, in the writer's transaction.

        The policy snapshot, the first pages (written claimed for this process's dispatcher)
        and the next step commit with the incident itself: no scheduler round trip before
        the first page, and no window in which the incident exists without its escalation.
        """
        incidents = [
            _Escalating(
                c.incident_id,
                c.tenant_id,
                c.service_id,
                IncidentStatus.TRIGGERED.value,
                None,
                1,
                0,
                now,
                c.last_alert_at,
                facts=c.facts,
            )
            for c in created
        ]
        outcome = _Outcome()
        for incident, new in zip(incidents, created, strict=True):
            initial = new.initial
            if isinstance(initial, InitialEscalation):
                incident.snapshot, incident.inserted = initial.snapshot, True
                self._arm(incident, initial, outcome)
        await self._start([i for i in incidents if not i.inserted], conn, now, outcome)
        await self._page_tiers(conn, incidents, now, outcome, fresh=True)
        return outcome

    async def initial_escalations(
        self, conn: Executor, service_ids: Iterable[str], now: datetime
    ) -> dict[str, InitialEscalation]:
        """Per service, the state a new incident created ``now`` has once tier 1 is paged."""
        initial: dict[str, InitialEscalation] = {}
        for service in await bulk.fetch_by_keys(conn, _SERVICES_WITH_POLICY, service_ids):
            snapshot = snapshot_of(service)
            step, due_at = after_page(snapshot, 0, now, now)
            initial[service.id] = InitialEscalation(
                snapshot, step, due_at, service.name, service.auto_resolve_seconds
            )
        return initial

    async def escalations_started(self, started: StartedEscalations) -> None:
        """After the writer's commit: hand the pages over and schedule the next steps."""
        assert isinstance(started, _Outcome)
        self.dispatcher.take(started.claimed)
        if started.enqueued:
            self.dispatcher.wake()
        if started.following:
            await self.due.add(started.following)
            self.wake()

    async def run_forever(self, stopping: asyncio.Event) -> None:
        await self.rebuild()
        last_sweep = asyncio.get_running_loop().time()
        while not stopping.is_set():
            self._wakeup.clear()  # before the work: a wake-up during it must not be lost
            try:
                handled = await self.tick()
                if asyncio.get_running_loop().time() - last_sweep >= self.sweep_seconds:
                    await self.sweep()
                    last_sweep = asyncio.get_running_loop().time()
            except Exception:
                log.exception("escalation scheduler failed; retrying")
                handled = 0
            if handled >= self.batch_size:
                continue
            timeout = self.poll_seconds
            with contextlib.suppress(Exception):
                next_ms = await self.due.next_due_ms()
                if next_ms is not None:
                    timeout = min(timeout, max(0.0, (next_ms - to_millis(self.clock.now())) / 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def tick(self) -> int:
        """Run every step due now (one claim); returns how many were claimed."""
        now_ms = to_millis(self.clock.now())
        claimed = await self.due.claim(now_ms, self.lease_ms, self.batch_size)
        if claimed is None:
            await self.rebuild()
            claimed = await self.due.claim(now_ms, self.lease_ms, self.batch_size) or []
        steps: dict[str, tuple[str, int, int]] = {}
        resolves: list[tuple[str, str]] = []
        for member, _ in claimed:
            prefix, incident_id, *rest = member.split("|")
            if prefix == state.STEP_PREFIX and len(rest) == 2:
                steps[member] = (incident_id, int(rest[0]), int(rest[1]))
            elif prefix == state.AUTO_RESOLVE_PREFIX:
                resolves.append((member, incident_id))
            else:
                log.error("dropping unknown scheduler member %r", member)
                await self.due.finish([member])
        if steps:
            await self._run_steps(steps)
        await asyncio.gather(
            *(self._run_auto_resolve(member, incident_id) for member, incident_id in resolves)
        )
        return len(claimed)

    async def _run_steps(self, steps: dict[str, tuple[str, int, int]]) -> None:
        """One transaction for the whole claim; if it fails, each step alone, so one bad row blocks none."""
        try:
            outcome = await self._steps(list(steps.values()))
        except Exception:
            if len(steps) == 1:
                # Left in flight: the lease runs out and this or another replica retries it.
                log.exception("escalation step %s failed", next(iter(steps)))
                return
            log.exception("a batch of %d escalation steps failed; running them one by one", len(steps))
            for member, step in steps.items():
                await self._run_steps({member: step})
            return
        self.steps_run += len(steps)
        self.dispatcher.take(outcome.claimed)
        if outcome.enqueued:
            self.dispatcher.wake()
        await self.due.finish(list(steps), outcome.following)
        self.changes.publish(outcome.changes)

    async def _run_auto_resolve(self, member: str, incident_id: str) -> None:
        async with self._limit:
            try:
                outcome = await self._auto_resolve(incident_id)
            except Exception:
                log.exception("auto-resolve of %s failed", incident_id)
                return
            await self.due.finish([member], outcome.following)

    async def _steps(self, steps: list[tuple[str, int, int]]) -> _Outcome:
        async def work(session: AsyncSession) -> _Outcome:
            outcome = _Outcome()
            # Locked in id order, so two replicas' batches cannot deadlock on PostgreSQL; NO KEY UPDATE,
            # so the outcomes of earlier pages (timeline rows referring to the incident) need not wait.
            incidents = {
                row.id: _Escalating(*row)
                for row in await session.execute(
                    select(*_ESCALATING_COLUMNS)
                    .where(Incident.id.in_({incident_id for incident_id, _, _ in steps}))
                    .order_by(Incident.id)
                    .with_for_update(key_share=True)
                )
            }
            now = self.clock.now()
            to_page: list[_Escalating] = []
            for incident_id, run, step in steps:
                incident = incidents.get(incident_id)
                if (
                    incident is None
                    or incident.run != run
                    or incident.step != step
                    or incident.due_at is None
                ):
                    continue  # fenced: an ack, a resolve or another replica got here first
                if step == state.ACK_TIMEOUT_STEP:
                    if incident.status == IncidentStatus.ACKNOWLEDGED.value:
                        await self._retrigger(session, incident_id, now, outcome)
                elif incident.status == IncidentStatus.TRIGGERED.value:
                    to_page.append(incident)
            if to_page:
                await self._start([i for i in to_page if i.snapshot is None], session, now, outcome)
                await self._page_tiers(session, to_page, now, outcome)
            await bulk.execute_all(
                session, [*outcome.writes, (bulk.insert_into(TimelineEntry), outcome.entries)]
            )
            return outcome

        return await retrying_write(self.sessions, work)

    async def _start(
        self, incidents: list[_Escalating], session: Executor, now: datetime, outcome: _Outcome
    ) -> None:
        """First step: freeze the policy onto the incident, and arm auto-resolve."""
        if not incidents:
            return
        initial = await self.initial_escalations(session, (i.service_id for i in incidents), now)
        for incident in incidents:
            start = initial.get(incident.service_id)
            incident.snapshot = start.snapshot if start else {}
            incident.started = True
            self._arm(incident, start, outcome)

    @staticmethod
    def _arm(incident: _Escalating, start: InitialEscalation | None, outcome: _Outcome) -> None:
        """What starting an escalation sets besides the snapshot: the pages' service name, and
        the auto-resolve deadline (``start`` None: the service is gone)."""
        if incident.facts is not None:
            incident.facts = replace(incident.facts, service_name=start.service_name if start else "")
        if start is not None and start.auto_resolve_seconds:
            deadline = incident.last_alert_at + timedelta(seconds=start.auto_resolve_seconds)
            outcome.following.append((state.auto_resolve_member(incident.id), to_millis(deadline)))

    async def _page_tiers(
        self,
        session: Executor,
        incidents: list[_Escalating],
        now: datetime,
        outcome: _Outcome,
        *,
        fresh: bool = False,
    ) -> None:
        """Page the current tier of each incident, and move each to its next step.

        The step moves are left in ``outcome.writes``: the caller runs them with the timeline rows.
        ``fresh``: the incidents were created in this transaction (see ``enqueue_pages``).
        """
        schedules = await self._schedules(session, incidents)
        requests: list[PageRequest] = []
        paging: list[tuple[_Escalating, list[dict[str, Any]], int, int, list[str]]] = []
        for incident in incidents:
            tiers: list[dict[str, Any]] = (incident.snapshot or {}).get("tiers") or []
            if not tiers:
                incident.due_at = None
                self._entry(incident, "escalated", "No escalation policy: nobody is paged", {}, outcome)
                continue
            loop, tier = divmod(incident.step, len(tiers))
            users = self._targets(tiers[tier].get("targets", []), schedules, incident.tenant_id, now)
            key = f"{incident.id}:{incident.run}:{incident.step}"
            requests.append(
                PageRequest(
                    incident.tenant_id,
                    incident.id,
                    users,
                    PAGE,
                    key,
                    incident.run,
                    tier,
                    loop,
                    incident.facts,
                )
            )
            paging.append((incident, tiers, tier, loop, users))
        all_paged, claimed = await enqueue_pages(
            session, self._dialect, requests, now, claim_until=self.dispatcher.claim_until(), fresh=fresh
        )
        outcome.claimed.extend(claimed)
        outcome.enqueued = outcome.enqueued or sum(p.notifications for p in all_paged) > len(claimed)
        for (incident, tiers, tier, loop, users), paged in zip(paging, all_paged, strict=True):
            snapshot = incident.snapshot or {}
            repeat = f" (repeat {loop} of {snapshot.get('repeat_count', 0)})" if loop else ""
            who = ", ".join(paged.user_names) if paged.user_names else "nobody is on call there"
            message = f"Escalated to tier {tier + 1}{repeat}: {who}"
            following, due = after_page(snapshot, incident.step, incident.due_at, now)
            incident.step, incident.due_at = following, due
            if due is not None:
                outcome.following.append(
                    (state.step_member(incident.id, incident.run, following), to_millis(due))
                )
                delay = int(tiers[tier].get("delay_seconds", 0))
                message += f"; tier {following % len(tiers) + 1} in {_duration(delay)} unless acknowledged"
            else:
                message += "; this is the last tier"
            details = {
                "tier": str(tier + 1),
                "loop": str(loop),
                "user_ids": ",".join(users),
                "policy_id": str(snapshot.get("policy_id", "")),
            }
            self._entry(incident, "escalated", message, details, outcome)
        advanced = [i for i in incidents if not i.started and not i.inserted]
        if advanced:
            outcome.writes.append(
                (_ADVANCE, [{"b_id": i.id, "b_step": i.step, "b_due": i.due_at} for i in advanced])
            )
        started = [i for i in incidents if i.started]
        if started:
            outcome.writes.append(
                (
                    _START,
                    [
                        {"b_id": i.id, "b_step": i.step, "b_due": i.due_at, "b_snapshot": i.snapshot}
                        for i in started
                    ],
                )
            )

    async def _schedules(
        self, session: Executor, incidents: list[_Escalating]
    ) -> dict[str, tuple[str, Schedule]]:
        """Every schedule the current tiers of these incidents name, loaded once: id -> (tenant, schedule)."""
        wanted: set[str] = set()
        for incident in incidents:
            tiers = (incident.snapshot or {}).get("tiers") or []
            if tiers:
                tier = tiers[incident.step % len(tiers)]
                wanted.update(t["id"] for t in tier.get("targets", []) if t.get("type") == "schedule")
        if not wanted:
            return {}
        rows = await session.execute(
            select(
                OnCallSchedule.id,
                OnCallSchedule.tenant_id,
                OnCallSchedule.time_zone,
                OnCallSchedule.layers,
                OnCallSchedule.overrides,
            ).where(OnCallSchedule.id.in_(wanted))
        )
        return {row.id: (row.tenant_id, from_json(row.time_zone, row.layers, row.overrides)) for row in rows}

    def _targets(
        self,
        targets: list[dict[str, str]],
        schedules: dict[str, tuple[str, Schedule]],
        tenant_id: str,
        at: datetime,
    ) -> list[str]:
        """User ids a tier pages: its users, and whoever is on call now in its schedules."""
        users: list[str] = []
        for target in targets:
            if target.get("type") == "user":
                users.append(target["id"])
            elif (found := schedules.get(target.get("id", ""))) is not None and found[0] == tenant_id:
                on_call = who_is_on_call(found[1], at)
                if on_call:
                    users.append(on_call)
        return list(dict.fromkeys(users))

    async def _retrigger(
        self, session: AsyncSession, incident_id: str, now: datetime, outcome: _Outcome
    ) -> None:
        """The acknowledgement timed out without a resolve: triggered again, from tier 1."""
        incident = await session.get_one(Incident, incident_id)
        incident.status = IncidentStatus.TRIGGERED.value
        incident.acknowledged_at, incident.acknowledged_by = None, ""
        incident.updated_at = now
        await session.execute(
            update(Alert)
            .where(Alert.incident_id == incident.id, Alert.state.in_(OPEN_ALERT_STATES))
            .values(state=AlertState.TRIGGERED.value)
        )
        state.restart(incident, now)
        self._entry(
            incident,
            "unacknowledged",
            "Acknowledgement timed out without a resolve: escalation restarts",
            {},
            outcome,
        )
        member = state.pending_member(incident)
        if member is not None:
            outcome.following.append(member)

    async def _auto_resolve(self, incident_id: str) -> _Outcome:
        async with self.sessions() as session:
            incident = await session.get(Incident, incident_id)
            if incident is None or incident.status == IncidentStatus.RESOLVED.value:
                return _Outcome()
            service = await session.get(Service, incident.service_id)
            # A repeat of a deduplicated alert is news too: the problem is still there.
            last_seen = await session.scalar(
                select(func.max(Alert.last_seen_at)).where(Alert.incident_id == incident_id)
            )
        if service is None or not service.auto_resolve_seconds:
            return _Outcome()
        quiet_since = max(incident.last_alert_at, last_seen or incident.last_alert_at)
        deadline = quiet_since + timedelta(seconds=service.auto_resolve_seconds)
        if deadline > self.clock.now():  # a newer alert moved it
            return _Outcome([(state.auto_resolve_member(incident_id), to_millis(deadline))])
        await self.incidents.resolve(
            incident.tenant_id,
            incident_id,
            "system",
            f"Auto-resolved: no new alerts for {_duration(service.auto_resolve_seconds)}",
        )
        return _Outcome()

    def _entry(
        self,
        incident: _Escalating | Incident,
        kind: str,
        message: str,
        details: dict[str, str],
        outcome: _Outcome,
    ) -> None:
        entry_id = uuid7()
        outcome.entries.append(
            {
                "id": entry_id,
                "tenant_id": incident.tenant_id,
                "incident_id": incident.id,
                "kind": kind,
                "actor": "system",
                "message": message,
                "details": details,
                "created_at": self.clock.now(),
            }
        )
        outcome.changes.append(Change(incident.tenant_id, incident.service_id, incident.id, entry_id))

    async def rebuild(self) -> None:
        """Refill the sorted set from SQL (startup, or Redis lost it): every pending step and auto-resolve."""
        items: list[tuple[str, int]] = []
        async with self.sessions() as session:
            result = await session.stream(
                select(
                    Incident.id, Incident.escalation_run, Incident.escalation_step, Incident.escalation_due_at
                )
                .where(Incident.escalation_due_at.is_not(None))
                .execution_options(yield_per=5000)
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
        added = await self.due.add_missing(items)
        await self.due.mark_loaded()
        if added:
            log.info("scheduler set rebuilt from SQL: %d member(s) restored", added)
        self.wake()

    async def sweep(self) -> int:
        """Re-add overdue steps Redis does not know (a process died between commit and ZADD)."""
        overdue = self.clock.now() - timedelta(seconds=self.sweep_seconds)
        async with self.sessions() as session:
            rows = await session.execute(
                select(
                    Incident.id, Incident.escalation_run, Incident.escalation_step, Incident.escalation_due_at
                )
                .where(Incident.escalation_due_at <= overdue)
                .limit(10_000)
            )
            items = [
                (state.step_member(i, run, step), to_millis(due))
                for i, run, step, due in rows.all()
                if due is not None
            ]
        added = await self.due.add_missing(items)
        if added:
            log.warning("scheduler sweep restored %d overdue step(s) missing from Redis", added)
        return added
