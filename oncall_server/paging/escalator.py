"""The escalation scheduler: claims due members of the Redis due set and runs them.

A member is an escalation step (page a tier, or re-trigger an acknowledgement that timed out) or
an auto-resolve deadline. Claims carry a lease, so a replica that dies mid-claim leaves its members
to the next claim once the lease runs out; what a step does, and whether it still should, is
decided in SQL (:mod:`oncall_server.paging.escalation_steps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from oncall_server.clock import Clock, to_millis
from oncall_server.incidents.actions import Incidents
from oncall_server.incidents.changes import ChangeFeed
from oncall_server.ingest.batch import NewIncident, StartedEscalations
from oncall_server.paging import due_set_recovery
from oncall_server.paging import escalation_state as state
from oncall_server.paging.auto_resolve import AutoResolver
from oncall_server.paging.claim_loop import run_claim_loop
from oncall_server.paging.due_set import DueSet
from oncall_server.paging.escalation_start import InitialEscalation, initial_escalations
from oncall_server.paging.escalation_steps import EscalationSteps, StepOutcome
from oncall_server.paging.outbox import LocalDispatcher
from oncall_server.storage.bulk import Executor
from oncall_server.storage.models import Incident

log = logging.getLogger(__name__)

ESCALATION_LAG = Histogram(
    "oncall_escalation_step_lag_seconds",
    "From an escalation step's due time to the scheduler running it (paging a tier, or re-triggering "
    "after an acknowledgement timeout); observed once the step's transaction commits.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


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
    """Runs escalation steps for every tenant; one per process, any number of replicas.

    Also what the ingest writer starts new incidents' escalations through (``EscalationStarter``).
    """

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
        self.lease_ms = int(lease_seconds * 1000)
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds
        self._limit = asyncio.Semaphore(concurrency)
        self._wakeup = timers.wakeup
        # This process's dispatcher: pages due now are written claimed for it and handed over.
        self.dispatcher = dispatcher
        self.steps = EscalationSteps(sessions, clock, dispatcher)
        self.auto_resolver = AutoResolver(sessions, clock, incidents)
        self.steps_run = 0

    def wake(self) -> None:
        self._wakeup.set()

    async def start_in_transaction(
        self, conn: AsyncConnection, created: Sequence[NewIncident], now: datetime
    ) -> StartedEscalations:
        """Tier 1 of incidents the ingest writer is creating, in the writer's transaction."""
        return await self.steps.start_in_transaction(conn, created, now)

    async def initial_escalations(
        self, conn: Executor, service_ids: Iterable[str], now: datetime
    ) -> dict[str, InitialEscalation]:
        """Per service, the state a new incident created ``now`` has once tier 1 is paged."""
        return await initial_escalations(conn, service_ids, now)

    async def escalations_started(self, started: StartedEscalations) -> None:
        """After the writer's commit: hand the pages over and schedule the next steps."""
        assert isinstance(started, StepOutcome)
        started.hand_over(self.dispatcher)
        if started.following:
            await self.due.add(started.following)
            self.wake()

    async def run_forever(self, stopping: asyncio.Event) -> None:
        await self.rebuild()
        last_sweep = asyncio.get_running_loop().time()

        async def tick_and_sweep() -> int:
            nonlocal last_sweep
            handled = await self.tick()
            if asyncio.get_running_loop().time() - last_sweep >= self.sweep_seconds:
                await self.sweep()
                last_sweep = asyncio.get_running_loop().time()
            return handled

        await run_claim_loop(
            stopping,
            self._wakeup,
            tick_and_sweep,
            batch_size=self.batch_size,
            idle_seconds=self._until_next_due,
            log=log,
            failure="escalation scheduler failed; retrying",
        )

    async def _until_next_due(self) -> float:
        """The poll interval, or less when a member falls due sooner."""
        timeout = self.poll_seconds
        with contextlib.suppress(Exception):
            next_ms = await self.due.next_due_ms()
            if next_ms is not None:
                timeout = min(timeout, max(0.0, (next_ms - to_millis(self.clock.now())) / 1000))
        return timeout

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
            outcome = await self.steps.run(list(steps.values()))
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
        for lag in outcome.lags:
            ESCALATION_LAG.observe(lag)
        outcome.hand_over(self.dispatcher)
        await self.due.finish(list(steps), outcome.following)
        self.changes.publish(outcome.changes)

    async def _run_auto_resolve(self, member: str, incident_id: str) -> None:
        async with self._limit:
            try:
                following = await self.auto_resolver.run(incident_id)
            except Exception:
                log.exception("auto-resolve of %s failed", incident_id)
                return
            await self.due.finish([member], following)

    async def rebuild(self) -> None:
        """Refill the sorted set from SQL (startup, or Redis lost it): every pending step and auto-resolve."""
        added = await self.due.add_missing(await due_set_recovery.all_members(self.sessions))
        await self.due.mark_loaded()
        if added:
            log.info("scheduler set rebuilt from SQL: %d member(s) restored", added)
        self.wake()

    async def sweep(self) -> int:
        """Re-add overdue steps Redis does not know (a process died between commit and ZADD)."""
        overdue = self.clock.now() - timedelta(seconds=self.sweep_seconds)
        added = await self.due.add_missing(await due_set_recovery.overdue_steps(self.sessions, overdue))
        if added:
            log.warning("scheduler sweep restored %d overdue step(s) missing from Redis", added)
        return added
