"""The notification outbox: pages are rows first, deliveries second.

A page is written in the same transaction as the state change that decides
it (an escalation step, a reassignment), so a process dying between commit
and send loses nothing: the dispatcher of any replica finds the row. The
dispatcher claims rows with a lease in one conditional UPDATE that also
checks the incident (still triggered, same escalation run), so once an
acknowledgement commits no further page of that incident is claimed; rows
already claimed before it are the only ones that can still go out. Every
outcome — sent, retrying, failed — lands on the incident timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.changes import Change, ChangeFeed
from oncall_server.clock import Clock
from oncall_server.hookspecs import DeliveryError, Destination, Page
from oncall_server.ids import uuid7
from oncall_server.ingest.model import IncidentFacts, IncidentStatus
from oncall_server.ingest.rides import Carrier, Ride
from oncall_server.plugins import Plugins
from oncall_server.severity import Severity
from oncall_server.storage import bulk
from oncall_server.storage.bulk import Executor
from oncall_server.storage.engine import single_read, write_connection, write_transaction
from oncall_server.storage.models import (
    ContactMethod,
    Incident,
    Notification,
    NotificationRule,
    Service,
    TimelineEntry,
    User,
)

log = logging.getLogger(__name__)

PAGE = "page"
ASSIGNED = "assigned"


def incident_url(public_url: str, incident_id: str) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


@dataclass(frozen=True, slots=True)
class PageContent(IncidentFacts):
    """Everything a page needs beyond its outbox row, under the names of a ``_CONTENT`` row."""

    user_id: str
    user_name: str
    user_email: str
    contact_method_id: str
    contact_type: str
    address: str
    secret: str = field(repr=False)  # never in logs or tracebacks


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One decision to page people about an incident (an escalation step, a reassignment)."""

    tenant_id: str
    incident_id: str
    user_ids: Sequence[str]
    kind: str
    key: str  # names the decision; with user, contact method and delay it forms the dedup key
    run: int
    tier: int
    loop: int
    incident: IncidentFacts | None = None  # given: claimed rows carry their content to the dispatcher


@dataclass(frozen=True, slots=True)
class Paged:
    """Who one request reached, for the timeline message."""

    user_names: list[str]
    notifications: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """The columns of a claimed outbox row the dispatcher needs (plain values, not an ORM object)."""

    id: str
    tenant_id: str
    incident_id: str
    kind: str
    tier: int
    loop: int
    user_id: str
    contact_method_id: str
    channel: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    # Handed over with what the page says: the dispatcher need not read it back.
    content: PageContent | None = None

    @classmethod
    def of(cls, row: Any, content: PageContent | None = None) -> OutboxRow:
        """From a mapping (an inserted row's values) or a result row."""
        get = row.__getitem__ if isinstance(row, dict) else row._mapping.__getitem__
        # Positional: a dict of keywords per row showed in profiles. mypy cannot count the star.
        return cls(*[get(name) for name in _OUTBOX_COLUMNS], content=content)  # type: ignore[misc]


_OUTBOX_COLUMNS = [f.name for f in dataclasses.fields(OutboxRow) if f.name != "content"]


async def enqueue_pages(
    executor: Executor,
    dialect: str,
    requests: Sequence[PageRequest],
    now: datetime,
    *,
    claim_until: datetime | None = None,
    fresh: bool = False,
) -> tuple[list[Paged], list[OutboxRow]]:
    """Write one outbox row per (user, notification rule) in the caller's transaction.

    Rows are unique on ``dedup_key``, so the same decision enqueued twice
    pages nobody twice. A user without rules is paged on every contact method
    at once. One call serves a whole batch of steps: one read and one insert.

    With ``claim_until`` the rows due now are written already claimed (leased
    to this process until then) and returned, so the caller's dispatcher sends
    them straight after the commit without a claim transaction of its own; if
    this process dies first, the lease runs out and any dispatcher sends them.

    ``fresh``: the incidents were created in the caller's transaction, so no row of theirs can be
    in the table yet; the insert then needs no answer and rides with the transaction's next trip
    (``bulk.execute_all``) instead of costing one of its own.
    """
    ids = list({user_id for request in requests for user_id in request.user_ids})
    if not ids:
        return [Paged([], 0) for _ in requests], []
    users: dict[str, Any] = {}
    methods: dict[str, list[str]] = {}
    method_of: dict[str, Any] = {}
    rule_rows: list[tuple[str, str, str, int]] = []
    for row in await bulk.fetch_by_keys(executor, _PAGING_DIRECTORY, ids):
        users[row.id] = row
        if row.method_id is not None and row.method_id not in method_of:
            method_of[row.method_id] = row
            methods.setdefault(row.id, []).append(row.method_id)
        if row.rule_id is not None:
            rule_rows.append((row.rule_id, row.id, row.method_id, row.delay_seconds))
    for user_methods in methods.values():
        user_methods.sort()
    rules: dict[str, list[tuple[str, int]]] = {}
    for _rule_id, user_id, method_id, delay in sorted(rule_rows):
        rules.setdefault(user_id, []).append((method_id, delay))
    rows: list[dict[str, Any]] = []
    keys: set[str] = set()
    results: list[Paged] = []
    for request in requests:
        names: list[str] = []
        before = len(rows)
        for user_id in dict.fromkeys(request.user_ids):
            user = users.get(user_id)
            if user is None or user.tenant_id != request.tenant_id:
                continue
            names.append(user.name)
            chosen = rules.get(user_id) or [(method_id, 0) for method_id in methods.get(user_id, [])]
            for method_id, delay in chosen:
                dedup_key = f"{request.key}:{user_id}:{method_id}:{delay}"
                if dedup_key in keys:  # two rules alike: one page
                    continue
                keys.add(dedup_key)
                claimed = claim_until is not None and delay == 0
                rows.append(
                    {
                        "id": uuid7(),
                        "tenant_id": request.tenant_id,
                        "incident_id": request.incident_id,
                        "kind": request.kind,
                        "dedup_key": dedup_key,
                        "escalation_run": request.run,
                        "tier": request.tier,
                        "loop": request.loop,
                        "user_id": user_id,
                        "contact_method_id": method_id,
                        "channel": method_of[method_id].channel,
                        "status": "sending" if claimed else "pending",
                        "attempts": 1 if claimed else 0,
                        "next_attempt_at": now + timedelta(seconds=delay),
                        "lease_until": claim_until if claimed else None,
                        "last_error": "",
                        "created_at": now,
                        "sent_at": None,
                    }
                )
        results.append(Paged(names, len(rows) - before))
    if not rows:
        return results, []
    if fresh:
        await bulk.execute_all(executor, [(bulk.insert_into(Notification), rows)])
        inserted = {row["id"] for row in rows}
    else:
        inserted = {
            row_id
            for (row_id,) in await executor.execute(
                _insert_notifications(dialect).returning(Notification.id), rows
            )
        }
    facts = {request.incident_id: request.incident for request in requests if request.incident is not None}
    claimed_rows = [
        OutboxRow.of(row, _content(facts.get(row["incident_id"]), method_of[row["contact_method_id"]]))
        for row in rows
        if row["status"] == "sending" and row["id"] in inserted
    ]
    return results, claimed_rows


def _content(facts: IncidentFacts | None, method: Any) -> PageContent | None:
    """A claimed row's content from the incident in hand and its ``_PAGING_DIRECTORY`` row."""
    if facts is None:
        return None
    return PageContent(
        facts.tenant_id,
        facts.incident_id,
        facts.service_id,
        facts.service_name,
        facts.title,
        facts.severity,
        facts.status,
        facts.description,
        facts.source,
        facts.source_ref,
        facts.details,
        method.id,
        method.name,
        method.email,
        method.method_id,
        method.channel,
        method.address,
        method.secret,
    )


# Whom a batch of pages reaches and how, in one query: users, their contact methods (by id) and
# their notification rules (by id; a method without rules yields one row with rule_id NULL).
_PAGING_DIRECTORY = bulk.KeyedSelect(
    select(
        User.id,
        User.tenant_id,
        User.name,
        User.email,
        ContactMethod.id.label("method_id"),
        ContactMethod.type.label("channel"),
        ContactMethod.address,
        ContactMethod.secret,
        NotificationRule.id.label("rule_id"),
        NotificationRule.delay_seconds,
    )
    .outerjoin(ContactMethod, ContactMethod.user_id == User.id)
    .outerjoin(
        NotificationRule,
        and_(NotificationRule.contact_method_id == ContactMethod.id, NotificationRule.user_id == User.id),
    ),
    User.id,
    "user_id",
)


def _insert_notifications(dialect: str) -> Any:
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(Notification).on_conflict_do_nothing(index_elements=["dedup_key"])


def _deliverable() -> Any:
    """SQL: the row's incident still wants it — a page only while its escalation run is current."""
    return exists().where(
        Incident.id == Notification.incident_id,
        or_(
            and_(
                Notification.kind == PAGE,
                Incident.status == IncidentStatus.TRIGGERED.value,
                Incident.escalation_run == Notification.escalation_run,
            ),
            and_(Notification.kind != PAGE, Incident.status != IncidentStatus.RESOLVED.value),
        ),
    )


def _claimable(now: datetime) -> Any:
    return and_(
        Notification.next_attempt_at <= now,
        or_(
            Notification.status == "pending",
            and_(Notification.status == "sending", Notification.lease_until < now),
        ),
    )


# What a page says, for a batch of claimed rows in one query (user and method may have been deleted).
_CONTENT = (
    select(
        Notification.id,
        Incident.id.label("incident_id"),
        Incident.tenant_id,
        Incident.service_id,
        Incident.title,
        Incident.severity,
        Incident.status,
        Incident.description,
        Incident.source,
        Incident.source_ref,
        Incident.details,
        Service.name.label("service_name"),
        User.id.label("user_id"),
        User.name.label("user_name"),
        User.email.label("user_email"),
        ContactMethod.id.label("contact_method_id"),
        ContactMethod.type.label("contact_type"),
        ContactMethod.address,
        ContactMethod.secret,
    )
    .join(Incident, Incident.id == Notification.incident_id)
    .outerjoin(Service, Service.id == Incident.service_id)
    .outerjoin(User, User.id == Notification.user_id)
    .outerjoin(ContactMethod, ContactMethod.id == Notification.contact_method_id)
    .where(Notification.id.in_(bindparam("ids", expanding=True)))
)


@dataclass(frozen=True, slots=True)
class _Outcomes:
    updates: list[dict[str, Any]]
    entries: list[dict[str, Any]]
    changes: list[Change]


# Outcomes waiting to be committed, and the future their sender waits on.
_Queued = tuple[_Outcomes, "asyncio.Future[None]"]


def _fail(taken: list[_Queued], error: BaseException) -> None:
    for _, done in taken:
        if not done.done():
            done.set_exception(error)


def _outcome_writes(taken: list[_Queued]) -> list[tuple[Any, list[dict[str, Any]]]]:
    return [
        (_RECORD_OUTCOME, [u for o, _ in taken for u in o.updates]),
        (bulk.insert_into(TimelineEntry), [e for o, _ in taken for e in o.entries]),
    ]


@dataclass(slots=True)
class _Delivery:
    row: OutboxRow
    page: Page | None
    destination: Destination | None
    error: str = ""
    retryable: bool = True
    user_name: str = ""
    service_id: str = ""


class Dispatcher:
    """Sends claimed outbox rows through the channel plugins, and records what happened.

    Rows come two ways: claimed by :meth:`run_once` (retries, expired leases, rows written by
    processes without a dispatcher, delayed notification rules), or handed over by
    :meth:`take` right after the transaction that wrote them already claimed.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        plugins: Plugins,
        changes: ChangeFeed,
        *,
        public_url: str,
        max_attempts: int = 10,
        lease_seconds: float = 60.0,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 300.0,
        poll_seconds: float = 0.5,
        batch_size: int = 200,
        max_handed_over: int = 5000,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.plugins = plugins
        self.changes = changes
        self.public_url = public_url
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_handed_over = max_handed_over
        self.running = False
        self._wakeup = asyncio.Event()
        self._handed_over: set[asyncio.Task[None]] = set()
        self._handed_over_rows = 0
        self._unrecorded: list[_Queued] = []
        self._refused: list[_Queued] = []  # rode in an ingest transaction that failed
        self._recorder: asyncio.Task[None] | None = None
        self.carrier: Carrier | None = None  # the ingest writer, which can carry outcomes

    def wake(self) -> None:
        self._wakeup.set()

    def claim_until(self) -> datetime | None:
        """A lease for rows a transaction of this process writes for :meth:`take`; None when they
        should be left pending instead: no dispatcher loop runs here, or sends are backing up."""
        if not self.running or self._handed_over_rows >= self.max_handed_over:
            return None
        return self.clock.now() + self.lease

    def take(self, rows: Sequence[OutboxRow]) -> None:
        """Send rows its caller's committed transaction wrote already claimed; returns at once."""
        if not rows:
            return
        self._handed_over_rows += len(rows)
        task = asyncio.create_task(self._deliver_handed_over(list(rows)))
        self._handed_over.add(task)
        task.add_done_callback(self._handed_over.discard)

    async def _deliver_handed_over(self, rows: list[OutboxRow]) -> None:
        try:
            await self._deliver(rows)
        except Exception:  # the rows stay leased; after the lease any dispatcher retries them
            log.exception("sending %d page(s) failed; they are retried when their lease ends", len(rows))
        finally:
            self._handed_over_rows -= len(rows)

    async def run_forever(self, stopping: asyncio.Event) -> None:
        self.running = True
        try:
            while not stopping.is_set():
                self._wakeup.clear()  # before the work: a wake-up during it must not be lost
                try:
                    handled = await self.run_once()
                except Exception:
                    log.exception("notification dispatch failed; retrying")
                    handled = 0
                if handled >= self.batch_size:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)
        finally:
            self.running = False
            await self.drain()

    async def drain(self) -> None:
        """Until every batch handed over by :meth:`take` is sent and recorded."""
        while self._handed_over:
            await asyncio.gather(*self._handed_over, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim, send and record one batch; returns how many rows it handled."""
        claimed = await self._claim()
        if claimed:
            await self._deliver(claimed)
        return len(claimed)

    async def _deliver(self, rows: list[OutboxRow]) -> None:
        deliveries = await self._prepare(rows)
        await asyncio.gather(*(self._send(d) for d in deliveries))
        await self._record(deliveries)

    async def _claim(self) -> list[OutboxRow]:
        now = self.clock.now()
        async with write_transaction(self.sessions) as session:
            # Rows their incident no longer wants (acknowledged, resolved, a newer run) are cancelled.
            await session.execute(
                update(Notification)
                .where(_claimable(now), ~_deliverable())
                .values(status="cancelled", last_error="the incident no longer escalates")
                .execution_options(synchronize_session=False)
            )
            candidates = (
                select(Notification.id)
                .where(_claimable(now), _deliverable())
                .order_by(Notification.next_attempt_at)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True, of=Notification)
            )
            result = await session.execute(
                update(Notification)
                .where(Notification.id.in_(candidates.scalar_subquery()))
                .values(status="sending", lease_until=now + self.lease, attempts=Notification.attempts + 1)
                .returning(*(getattr(Notification, name) for name in _OUTBOX_COLUMNS))
                .execution_options(synchronize_session=False)
            )
            return [OutboxRow.of(row) for row in result.all()]

    async def _prepare(self, claimed: list[OutboxRow]) -> list[_Delivery]:
        """Each row's page and destination: from the row when it was handed over with them (the page
        then says what the committing transaction saw), else read as the incident is now."""
        unknown = [row.id for row in claimed if row.content is None]
        content: dict[str, Any] = {}
        if unknown:
            async with single_read(self.sessions.kw["bind"]) as conn:
                content = {row.id: row for row in await conn.execute(_CONTENT, {"ids": unknown})}
        out = []
        for row in claimed:
            found = row.content or content[row.id]
            if found.user_id is None or found.contact_method_id is None:
                out.append(
                    _Delivery(
                        row, None, None, "the user or contact method was deleted", False, "", found.service_id
                    )
                )
                continue
            page = build_page(row, found, self.public_url)
            destination = Destination(
                found.contact_method_id, found.contact_type, found.address, found.secret
            )
            out.append(
                _Delivery(row, page, destination, user_name=found.user_name, service_id=found.service_id)
            )
        return out

    async def _send(self, delivery: _Delivery) -> None:
        if delivery.page is None or delivery.destination is None:
            return
        channel = self.plugins.channels.get(delivery.row.channel)
        if channel is None:
            delivery.error = f"no notification channel named {delivery.row.channel!r} is installed"
            delivery.retryable = False
            return
        try:
            await channel.send(delivery.page, delivery.destination)
        except DeliveryError as exc:
            delivery.error, delivery.retryable = str(exc) or type(exc).__name__, exc.retryable
        except Exception as exc:  # a plugin bug must not stop other pages
            log.exception("channel %s failed", delivery.row.channel)
            delivery.error, delivery.retryable = f"{type(exc).__name__}: {exc}", True

    def _retry_delay(self, attempts: int) -> float:
        return float(min(self.retry_base_seconds * 2 ** (attempts - 1), self.retry_max_seconds))

    async def _record(self, deliveries: list[_Delivery]) -> None:
        """Queue the outcomes for :meth:`_record_queued`; returns once they are committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unrecorded.append((self._outcomes(deliveries), done))
        self._start_recorder()
        await done

    def _start_recorder(self) -> None:
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_queued(), name="outbox-recorder")

    def take_ride(self) -> Ride | None:
        """The queued outcomes as writes for the ingest writer's transaction (see :class:`Carrier`)."""
        if not self._unrecorded:
            return None
        taken, self._unrecorded = self._unrecorded, []
        return Ride(_outcome_writes(taken), functools.partial(self._settle_ride, taken))

    def _settle_ride(self, taken: list[_Queued], error: BaseException | None) -> None:
        if error is None:
            self._recorded(taken)
            return
        self._refused += taken  # recorded by the recorder itself, never offered again
        self._start_recorder()

    async def _record_queued(self) -> None:
        """Group commit of outcomes: everything queued by the time the write lock is ours, in one
        transaction of executemany updates and timeline inserts.

        Under load every ingest batch hands its pages over separately; recording each batch's
        outcomes in its own transaction doubled the write transactions of ingest on SQLite. While
        an ingest batch is coming anyway, they ride in its transaction instead (a commit and its
        fsync fewer per batch).
        """
        taken: list[_Queued] = []
        try:
            while self._unrecorded or self._refused:
                carrier = self.carrier
                if carrier and not self._refused and carrier.will_carry() and await carrier.carried():
                    continue  # they rode in an ingest transaction; look again at what queued since
                taken = []
                try:
                    async with write_connection(self.sessions.kw["bind"]) as conn:
                        taken = self._take_queued()
                        await bulk.execute_all(conn, _outcome_writes(taken))
                except Exception as exc:
                    failed = taken or self._take_queued()  # no connection: fail them, do not spin
                    log.warning("could not record the outcomes of %d page batch(es): %s", len(failed), exc)
                    _fail(failed, exc)
                    continue
                self._recorded(taken)
        except BaseException as exc:  # cancelled: nothing must wait for a recorder that is gone
            _fail(taken + self._take_queued(), exc)
            raise

    def _take_queued(self) -> list[_Queued]:
        taken, self._refused, self._unrecorded = self._refused + self._unrecorded, [], []
        return taken

    def _recorded(self, taken: list[_Queued]) -> None:
        self.changes.publish(c for o, _ in taken for c in o.changes)
        for _, done in taken:
            if not done.done():
                done.set_result(None)

    def _outcomes(self, deliveries: list[_Delivery]) -> _Outcomes:
        """The outbox updates, timeline entries and change-feed messages of sent (or failed) pages."""
        now = self.clock.now()
        updates: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        changes: list[Change] = []
        for delivery in deliveries:
            row = delivery.row
            who = delivery.user_name or row.user_id
            outcome = {
                "b_id": row.id,
                "status": "sent",
                "sent_at": None,
                "next_attempt_at": row.next_attempt_at,
                "last_error": delivery.error,
            }
            if not delivery.error:
                outcome["sent_at"] = now
                message = f"Notified {who} via {row.channel}"
            elif delivery.retryable and row.attempts < self.max_attempts:
                delay = self._retry_delay(row.attempts)
                outcome["status"], outcome["next_attempt_at"] = "retrying", now + timedelta(seconds=delay)
                message = (
                    f"Could not notify {who} via {row.channel}: {delivery.error}; retrying in {delay:g}s"
                )
            else:
                outcome["status"] = "failed"
                message = (
                    f"Failed to notify {who} via {row.channel} after {row.attempts} attempt(s): "
                    f"{delivery.error}"
                )
            entry_id = uuid7()
            entries.append(
                {
                    "id": entry_id,
                    "tenant_id": row.tenant_id,
                    "incident_id": row.incident_id,
                    "kind": "notification",
                    "actor": "system",
                    "message": message,
                    "details": {
                        "notification_id": row.id,
                        "user_id": row.user_id,
                        "channel": row.channel,
                        "attempts": str(row.attempts),
                        "tier": str(row.tier),
                        "status": outcome["status"],
                        "error": delivery.error,
                    },
                    "created_at": now,
                }
            )
            if outcome["status"] == "retrying":
                outcome["status"] = "pending"
            updates.append(outcome)
            changes.append(Change(row.tenant_id, delivery.service_id, row.incident_id, entry_id))
        return _Outcomes(updates, entries, changes)


_notifications = cast(Table, Notification.__table__)
# Only a row still leased to us changes: a row another replica reclaimed after our lease is theirs.
_RECORD_OUTCOME = (
    update(_notifications)
    .where(_notifications.c.id == bindparam("b_id"), _notifications.c.status == "sending")
    .values(
        status=bindparam("status"),
        sent_at=bindparam("sent_at"),
        next_attempt_at=bindparam("next_attempt_at"),
        last_error=bindparam("last_error"),
        lease_until=None,
    )
)


def build_page(row: OutboxRow, content: Any, public_url: str) -> Page:
    """The message content the spec asks for, from the incident as it is now (a ``_CONTENT`` row)."""
    details = content.details or {}
    return Page(
        notification_id=row.id,
        kind=row.kind,
        tenant_id=content.tenant_id,
        incident_id=content.incident_id,
        incident_url=incident_url(public_url, content.incident_id),
        title=content.title,
        severity=Severity(content.severity).label,
        status=content.status,
        service_id=content.service_id,
        service_name=content.service_name or "",
        description=content.description,
        source=content.source,
        source_ref=content.source_ref,
        device_name=str(details.get("device_name", "")),
        detection_type=str(details.get("detection_type", "")),
        mitre_technique=str(details.get("mitre_technique", "")),
        recommended_action=str(details.get("recommended_action", "")),
        defend_url=str(details.get("defend_url", "")),
        tier=row.tier + 1 if row.kind == PAGE else 0,
        loop=row.loop,
        user_id=content.user_id,
        user_name=content.user_name,
        user_email=content.user_email,
        created_at=row.created_at,
    )
