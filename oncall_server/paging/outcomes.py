"""Recording page outcomes: outbox updates and timeline rows, group-committed.

Everything the dispatcher's sends have queued by the time a connection is ours goes in one
transaction; while an ingest batch is coming anyway, the ingest commit carries them instead
(:mod:`oncall_server.ingest.carried_writes`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from prometheus_client import Counter, Histogram
from sqlalchemy import Table, bindparam, event, or_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server import failures
from oncall_server.ids import uuid7
from oncall_server.incidents.changes import Change, ChangeFeed
from oncall_server.ingest.carried_writes import CarriedWrites, NextIngestCommit
from oncall_server.paging.outbox import DELIVERING, SENDING
from oncall_server.storage import bulk
from oncall_server.storage.engine import write_connection
from oncall_server.storage.models import Notification, TimelineEntry

log = logging.getLogger(__name__)

_RECORD_ATTEMPTS = 5

PAGES_OUTCOME_UNKNOWN = Counter(
    "oncall_pages_outcome_unknown_total",
    "Notifications of at-most-once channels whose send began but whose outcome never came back "
    "(the sender died, or the channel could not tell); recorded as unknown, not sent again.",
    ["channel"],
)
NOTIFICATIONS = Counter(
    "oncall_notifications_total",
    "Notification outcomes once committed, by channel and outcome: sent, retrying, failed, unknown "
    "(at-most-once send whose outcome never came back), cancelled (the incident stopped wanting it).",
    ["channel", "outcome"],
)
SEND_LAG = Histogram(
    "oncall_notification_send_lag_seconds",
    "From the time a notification's attempt fell due (its next_attempt_at) to its successful send.",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


def count_when_committed(session: AsyncSession, outcome: str, channels: Iterable[str]) -> None:
    """Count ``outcome`` for each channel once the session's transaction commits (never on a
    rollback, so a retried transaction counts once)."""
    counts: dict[str, int] = {}
    for channel in channels:
        counts[channel] = counts.get(channel, 0) + 1
    if not counts:
        return

    def committed(_session: object) -> None:
        for channel, n in counts.items():
            NOTIFICATIONS.labels(channel, outcome).inc(n)

    event.listen(session.sync_session, "after_commit", committed, once=True)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What one batch of sends changes: outbox rows, timeline rows, and the news of both."""

    updates: list[dict[str, Any]]
    entries: list[dict[str, Any]]
    changes: list[Change]
    unknown: list[UnknownOutcome] = field(default_factory=list)  # told to the operator once committed
    sent_lags: list[tuple[str, float]] = field(default_factory=list)  # (channel, seconds due -> sent)


@dataclass(frozen=True, slots=True)
class UnknownOutcome:
    """An at-most-once page whose outcome is unknown: what the operator is told."""

    notification_id: str
    incident_id: str
    channel: str
    who: str
    why: str

    def report(self) -> None:
        PAGES_OUTCOME_UNKNOWN.labels(self.channel).inc()
        log.warning(
            "page %s of incident %s to %s via %s: outcome unknown (%s); not sent again, %s cannot "
            "drop a repeat: check with them",
            self.notification_id,
            self.incident_id,
            self.who,
            self.channel,
            self.why,
            self.channel,
        )

    def message(self) -> str:
        return (
            f"Page to {self.who} via {self.channel} may not have arrived: {self.why}; not sent again "
            f"({self.channel} cannot drop a repeat)"
        )


# Outcomes waiting to be committed, and the future their sender waits on.
_Queued = tuple[Outcomes, "asyncio.Future[None]"]


def _fail(taken: list[_Queued], error: BaseException) -> None:
    for _, done in taken:
        if not done.done():
            done.set_exception(error)


def _outcome_writes(taken: list[_Queued]) -> list[tuple[Any, list[dict[str, Any]]]]:
    return [
        (_RECORD_OUTCOME, [u for o, _ in taken for u in o.updates]),
        (bulk.insert_into(TimelineEntry), [e for o, _ in taken for e in o.entries]),
    ]


class OutcomeRecorder:
    """Commits the outcomes of sent pages, alone or carried by the next ingest commit."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        changes: ChangeFeed,
        *,
        ingest_commit: NextIngestCommit | None = None,
    ) -> None:
        self.sessions = sessions
        self.changes = changes
        self.ingest_commit = ingest_commit  # this process's ingest commits, which can carry outcomes
        self._unrecorded: list[_Queued] = []
        self._refused: list[_Queued] = []  # carried by an ingest transaction that failed
        self._recorder: asyncio.Task[None] | None = None

    async def record(self, outcomes: Outcomes) -> None:
        """Queue the outcomes for :meth:`_record_queued`; returns once they are committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unrecorded.append((outcomes, done))
        self._start_recorder()
        await done

    def _start_recorder(self) -> None:
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_queued(), name="outbox-recorder")

    def take_carried_writes(self) -> CarriedWrites | None:
        """The queued outcomes as writes for the ingest writer's transaction (see
        :mod:`oncall_server.ingest.carried_writes`)."""
        if not self._unrecorded:
            return None
        taken, self._unrecorded = self._unrecorded, []
        return CarriedWrites(_outcome_writes(taken), functools.partial(self._settle_carried, taken))

    def _settle_carried(self, taken: list[_Queued], error: BaseException | None) -> None:
        if error is None:
            self._recorded(taken)
            return
        self._refused += taken  # recorded by the recorder itself, never offered again
        self._start_recorder()

    async def _record_queued(self) -> None:
        """Group commit of outcomes: everything queued by the time the write lock is ours, in one
        transaction of executemany updates and timeline inserts.

        While an ingest batch is coming anyway, the ingest commit carries them instead, which saves
        a commit per ingest batch.
        """
        taken: list[_Queued] = []
        try:
            while self._unrecorded or self._refused:
                commit = self.ingest_commit
                if commit and not self._refused and commit.will_carry() and await commit.carried():
                    continue  # an ingest transaction carried them; look again at what queued since
                taken = []
                try:
                    await self._write_outcomes(taken)
                except Exception as exc:
                    failed = taken or self._take_queued()  # no connection: fail them, do not spin
                    log.warning("could not record the outcomes of %d page batch(es): %s", len(failed), exc)
                    _fail(failed, exc)
                    continue
                self._recorded(taken)
        except BaseException as exc:  # cancelled: nothing must wait for a recorder that is gone
            _fail(taken + self._take_queued(), exc)
            raise

    async def _write_outcomes(self, taken: list[_Queued]) -> None:
        """Everything queued, in one transaction, run again after a deadlock or serialization failure
        (the writes are fenced updates and inserts of fixed ids: running them twice is harmless).
        Fills ``taken`` with what it took, so the caller can settle it whatever happens."""
        for attempt in range(1, _RECORD_ATTEMPTS + 1):
            try:
                async with write_connection(self.sessions.kw["bind"]) as conn:
                    if not taken:
                        taken.extend(self._take_queued())
                    await bulk.execute_all(conn, _outcome_writes(taken))
                return
            except DBAPIError as exc:
                if attempt == _RECORD_ATTEMPTS or not failures.is_transient(exc):
                    raise
                await asyncio.sleep(0.01 * attempt)

    def _take_queued(self) -> list[_Queued]:
        taken, self._refused, self._unrecorded = self._refused + self._unrecorded, [], []
        return taken

    def _recorded(self, taken: list[_Queued]) -> None:
        self.announce([o for o, _ in taken])
        for _, done in taken:
            if not done.done():
                done.set_result(None)

    def announce(self, committed: list[Outcomes]) -> None:
        """What committed outcomes tell others: the change feed, and the operator about unknowns."""
        self.changes.publish(c for o in committed for c in o.changes)
        for outcomes in committed:
            for entry in outcomes.entries:  # one notification timeline entry per outcome
                details = entry["details"]
                NOTIFICATIONS.labels(details["channel"], details["status"]).inc()
            for channel, seconds in outcomes.sent_lags:
                SEND_LAG.labels(channel).observe(seconds)
            for unknown in outcomes.unknown:
                unknown.report()


def timeline_entry(
    tenant_id: str, incident_id: str, message: str, details: dict[str, str], now: datetime
) -> dict[str, Any]:
    """A ``notification`` timeline entry's row."""
    return {
        "id": uuid7(),
        "tenant_id": tenant_id,
        "incident_id": incident_id,
        "kind": "notification",
        "actor": "system",
        "message": message,
        "details": details,
        "created_at": now,
    }


_notifications = cast(Table, Notification.__table__)
# Still ours: in flight, and not claimed again since (a claim increments attempts).
STILL_OURS = (
    _notifications.c.id == bindparam("b_id"),
    _notifications.c.attempts == bindparam("b_attempts"),
    or_(_notifications.c.status == SENDING, _notifications.c.status == DELIVERING),
)
# Only a row still leased to us changes: a row another replica reclaimed after our lease is theirs.
_RECORD_OUTCOME = (
    update(_notifications)
    .where(*STILL_OURS)
    .values(
        status=bindparam("status"),
        sent_at=bindparam("sent_at"),
        next_attempt_at=bindparam("next_attempt_at"),
        last_error=bindparam("last_error"),
        lease_until=None,
    )
)
