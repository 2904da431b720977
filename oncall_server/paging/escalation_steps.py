"""Running escalation steps in SQL: fence, page the tier, move the incident to its next step.

Each batch of steps runs in one transaction that first checks the incident still expects the step
(same run, same step, still triggered) and then writes the outbox rows, the timeline entries and
the incident's next step together. A step run twice (a lease expired, a rebuilt due set) finds the
step already advanced and does nothing; if it got as far as the outbox, the rows' unique key stops
a second page anyway. Redis only says *when* to look; SQL says *whether*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from oncall_server.clock import Clock, to_millis
from oncall_server.ids import uuid7
from oncall_server.incidents.actions import OPEN_ALERT_STATES
from oncall_server.incidents.changes import Change
from oncall_server.incidents.model import AlertState, IncidentFacts, IncidentStatus
from oncall_server.ingest.batch import NewIncident
from oncall_server.paging import escalation_state as state
from oncall_server.paging.escalation_start import InitialEscalation, after_page, initial_escalations
from oncall_server.paging.outbox import PAGE, LocalDispatcher, OutboxRow, PageRequest, enqueue_pages
from oncall_server.paging.tier_targets import load_schedules, tier_users
from oncall_server.storage import bulk
from oncall_server.storage.bulk import Executor
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import Alert, Incident, TimelineEntry


@dataclass(slots=True)
class StepOutcome:
    """What a batch of steps leaves for after its commit, and the writes it leaves to its caller."""

    following: list[tuple[str, int]] = field(default_factory=list)  # due-set members to add
    changes: list[Change] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)  # timeline rows, inserted in one statement
    # Step moves, run by the caller with the timeline rows (one trip on SQLite): see bulk.execute_all.
    writes: list[tuple[Any, list[dict[str, Any]]]] = field(default_factory=list)
    claimed: list[OutboxRow] = field(default_factory=list)  # written claimed: this process sends them
    enqueued: bool = False  # rows left pending for a dispatcher to claim
    lags: list[float] = field(default_factory=list)  # seconds from each step run's due time to its run

    def hand_over(self, dispatcher: LocalDispatcher) -> None:
        """After the commit: this process's dispatcher sends the claimed rows, and looks for the rest."""
        dispatcher.take(self.claimed)
        if self.enqueued:
            dispatcher.wake()


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

    @property
    def tiers(self) -> list[dict[str, Any]]:
        return (self.snapshot or {}).get("tiers") or []


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


def duration_text(seconds: int) -> str:
    """A delay as timeline messages give it: ``90s``, ``2m``, ``2h``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


class EscalationSteps:
    """Runs escalation steps: a batch the scheduler claimed, or tier 1 in the ingest writer's transaction."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        dispatcher: LocalDispatcher,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        # This process's dispatcher: pages due now are written claimed for it and handed over.
        self.dispatcher = dispatcher
        self._dialect = sessions.kw["bind"].dialect.name

    async def start_in_transaction(
        self, conn: AsyncConnection, created: Sequence[NewIncident], now: datetime
    ) -> StepOutcome:
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
        outcome = StepOutcome()
        for incident, new in zip(incidents, created, strict=True):
            initial = new.initial
            if isinstance(initial, InitialEscalation):
                incident.snapshot, incident.inserted = initial.snapshot, True
                self._arm(incident, initial, outcome)
        await self._start([i for i in incidents if not i.inserted], conn, now, outcome)
        await self._page_tiers(conn, incidents, now, outcome, fresh=True)
        return outcome

    async def run(self, steps: list[tuple[str, int, int]]) -> StepOutcome:
        """Run these (incident, run, step) in one transaction; steps no longer expected are skipped."""

        async def work(session: AsyncSession) -> StepOutcome:
            outcome = StepOutcome()
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
                lag = max(0.0, (now - incident.due_at).total_seconds())
                if step == state.ACK_TIMEOUT_STEP:
                    if incident.status == IncidentStatus.ACKNOWLEDGED.value:
                        outcome.lags.append(lag)
                        await self._retrigger(session, incident_id, now, outcome)
                elif incident.status == IncidentStatus.TRIGGERED.value:
                    outcome.lags.append(lag)
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
        self, incidents: list[_Escalating], session: Executor, now: datetime, outcome: StepOutcome
    ) -> None:
        """First step: freeze the policy onto the incident, and arm auto-resolve."""
        if not incidents:
            return
        initial = await initial_escalations(session, (i.service_id for i in incidents), now)
        for incident in incidents:
            start = initial.get(incident.service_id)
            incident.snapshot = start.snapshot if start else {}
            incident.started = True
            self._arm(incident, start, outcome)

    @staticmethod
    def _arm(incident: _Escalating, start: InitialEscalation | None, outcome: StepOutcome) -> None:
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
        outcome: StepOutcome,
        *,
        fresh: bool = False,
    ) -> None:
        """Page the current tier of each incident, and move each to its next step.

        The step moves are left in ``outcome.writes``: the caller runs them with the timeline rows.
        ``fresh``: the incidents were created in this transaction (see ``enqueue_pages``).
        """
        schedules = await load_schedules(
            session, (i.tiers[i.step % len(i.tiers)] for i in incidents if i.tiers)
        )
        requests: list[PageRequest] = []
        paging: list[tuple[_Escalating, list[dict[str, Any]], int, int, list[str]]] = []
        for incident in incidents:
            tiers = incident.tiers
            if not tiers:
                incident.due_at = None
                self._entry(incident, "escalated", "No escalation policy: nobody is paged", {}, outcome)
                continue
            loop, tier = divmod(incident.step, len(tiers))
            users = tier_users(tiers[tier].get("targets", []), schedules, incident.tenant_id, now)
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
                message += (
                    f"; tier {following % len(tiers) + 1} in {duration_text(delay)} unless acknowledged"
                )
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

    async def _retrigger(
        self, session: AsyncSession, incident_id: str, now: datetime, outcome: StepOutcome
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

    def _entry(
        self,
        incident: _Escalating | Incident,
        kind: str,
        message: str,
        details: dict[str, str],
        outcome: StepOutcome,
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
