"""The outbox dispatcher: claims page rows, sends them through the channel plugins, decides outcomes.

It claims rows with a lease in one conditional UPDATE that also checks the incident (still
triggered, same escalation run), so once an acknowledgement commits no further page of that
incident is claimed; rows already claimed before it are the only ones that can still go out.
Every outcome — sent, retrying, failed, unknown — lands on the incident timeline.

Leases are short (``ONCALL_NOTIFY_LEASE_SECONDS``) and renewed while a send is in progress, so a
slow but live send keeps its row and a dead replica's rows are taken over within about one lease.
What a take-over does depends on the channel's declared delivery (``hookspecs.delivery_of``): an
at-least-once channel's page is sent again with the same notification id; an at-most-once
channel's page is marked ``delivering`` in its own transaction before the network call, and a
``delivering`` row whose lease ran out is never sent again: its outcome is recorded as
``unknown``, the operator is told (a warning, ``oncall_pages_outcome_unknown_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.hookspecs import (
    AT_LEAST_ONCE,
    AT_MOST_ONCE,
    Channel,
    DeliveryError,
    Destination,
    OutcomeUnknown,
    Page,
    delivery_of,
)
from oncall_server.incidents.changes import Change
from oncall_server.incidents.model import IncidentStatus
from oncall_server.paging.outbox import (
    DELIVERING,
    OUTBOX_COLUMNS,
    PAGE,
    SENDING,
    UNKNOWN,
    OutboxRow,
    incident_url,
)
from oncall_server.paging.outcomes import (
    STILL_OURS,
    OutcomeRecorder,
    Outcomes,
    UnknownOutcome,
    timeline_entry,
)
from oncall_server.plugins import Plugins
from oncall_server.severity import Severity
from oncall_server.storage import bulk
from oncall_server.storage.engine import single_read, write_connection, write_transaction
from oncall_server.storage.models import ContactMethod, Incident, Notification, Service, TimelineEntry, User

log = logging.getLogger(__name__)


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
            and_(Notification.status == SENDING, Notification.lease_until < now),
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


@dataclass(slots=True)
class _Delivery:
    row: OutboxRow
    page: Page | None
    destination: Destination | None
    error: str = ""
    retryable: bool = True
    user_name: str = ""
    service_id: str = ""
    channel: Channel | None = None
    at_most_once: bool = True
    unknown: bool = False  # the send went out, its outcome did not come back


def _delivery_semantics(channel: Channel) -> str:
    try:
        return delivery_of(channel)
    except ValueError as exc:  # a plugin's typo: the safe reading, loudly
        log.error("%s; treated as %s", exc, AT_MOST_ONCE)
        return AT_MOST_ONCE


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
        recorder: OutcomeRecorder,
        *,
        public_url: str,
        max_attempts: int = 10,
        lease_seconds: float = 10.0,
        send_timeout_seconds: float = 30.0,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 300.0,
        poll_seconds: float = 0.5,
        batch_size: int = 200,
        max_handed_over: int = 5000,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.plugins = plugins
        self.recorder = recorder  # commits what became of the pages sent
        self.public_url = public_url
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        # Without it a channel that never answers would keep its lease renewed, and its page, forever.
        self.send_timeout_seconds = send_timeout_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_handed_over = max_handed_over
        self.running = False
        self._wakeup = asyncio.Event()
        self._handed_over: set[asyncio.Task[None]] = set()
        self._handed_over_rows = 0
        # Rows this process is sending (id -> attempts, the claim's fencing token): leases renewed.
        self._in_flight: dict[str, int] = {}

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
        heartbeat = asyncio.create_task(self._keep_leases(), name="outbox-leases")
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
            try:
                await self.drain()
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _keep_leases(self) -> None:
        """Renew the leases of rows in flight three times per lease, so a slow send keeps its row."""
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_leases()
            except Exception as exc:  # the next beat tries again; past the lease others take over
                log.warning(
                    "could not renew the leases of %d page(s) in flight: %s", len(self._in_flight), exc
                )

    async def renew_leases(self) -> int:
        """Extend by one lease every row this process is still sending; returns how many it held.

        Fenced by the claim's ``attempts``: a row another dispatcher took over is left alone.
        """
        held = sorted(self._in_flight.items())  # rows locked in id order on PostgreSQL
        if not held:
            return 0
        until = self.clock.now() + self.lease
        async with write_connection(self.sessions.kw["bind"]) as conn:
            await bulk.execute_all(
                conn, [(_RENEW_LEASE, [{"b_id": i, "b_attempts": a, "b_until": until} for i, a in held])]
            )
        return len(held)

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
        for row in rows:
            self._in_flight[row.id] = row.attempts
        try:
            deliveries = await self._prepare(rows)
            deliveries = await self._begin_at_most_once(deliveries)
            await asyncio.gather(*(self._send(d) for d in deliveries))
            await self._record(deliveries)
        finally:
            for row in rows:
                if self._in_flight.get(row.id) == row.attempts:  # not re-claimed here meanwhile
                    del self._in_flight[row.id]

    async def _begin_at_most_once(self, deliveries: list[_Delivery]) -> list[_Delivery]:
        """Mark the at-most-once sends ``delivering`` (committed) before any of them goes out.

        The mark is fenced by the claim (status ``sending``, same ``attempts``): a row whose lease
        ran out and that another dispatcher took meanwhile is not sent here (nor recorded).
        """
        starting = [d for d in deliveries if d.at_most_once and d.channel is not None and d.page is not None]
        if not starting:
            return deliveries
        async with write_connection(self.sessions.kw["bind"]) as conn:
            result = await conn.execute(
                update(_notifications)
                .where(
                    tuple_(_notifications.c.id, _notifications.c.attempts).in_(
                        [(d.row.id, d.row.attempts) for d in starting]
                    ),
                    _notifications.c.status == SENDING,
                )
                .values(status=DELIVERING, lease_until=self.clock.now() + self.lease)
                .returning(_notifications.c.id)
            )
            ours = {row_id for (row_id,) in result}
        if len(ours) == len(starting):
            return deliveries
        lost = {d.row.id for d in starting if d.row.id not in ours}
        log.info("%d page(s) were taken over by another dispatcher before their send began", len(lost))
        return [d for d in deliveries if d.row.id not in lost]

    async def _claim(self) -> list[OutboxRow]:
        now = self.clock.now()
        async with write_transaction(self.sessions) as session:
            unknown = await self._abandon_unknown(session, now)
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
                .values(status=SENDING, lease_until=now + self.lease, attempts=Notification.attempts + 1)
                .returning(*(getattr(Notification, name) for name in OUTBOX_COLUMNS))
                .execution_options(synchronize_session=False)
            )
            claimed = [OutboxRow.of(row) for row in result.all()]
        if unknown:
            self.recorder.announce([unknown])
        return claimed

    async def _abandon_unknown(self, session: AsyncSession, now: datetime) -> Outcomes | None:
        """``delivering`` rows whose lease ran out: their sender died mid-send. Recorded ``unknown``
        with a timeline entry, in the claim's transaction; never sent again."""
        result = await session.execute(
            update(Notification)
            .where(Notification.status == DELIVERING, Notification.lease_until < now)
            .values(
                status=UNKNOWN,
                lease_until=None,
                last_error="outcome unknown: the process sending it stopped mid-send",
            )
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        )
        ids = [row_id for (row_id,) in result]
        if not ids:
            return None
        rows = await session.execute(
            select(
                Notification.id,
                Notification.tenant_id,
                Notification.incident_id,
                Notification.user_id,
                Notification.channel,
                Notification.tier,
                Notification.attempts,
                Incident.service_id,
                User.name,
            )
            .join(Incident, Incident.id == Notification.incident_id)
            .outerjoin(User, User.id == Notification.user_id)
            .where(Notification.id.in_(ids))
        )
        outcomes = Outcomes([], [], [])
        for row in rows:
            unknown = UnknownOutcome(
                row.id,
                row.incident_id,
                row.channel,
                row.name or row.user_id,
                f"the process sending it stopped mid-send, attempt {row.attempts}",
            )
            entry = timeline_entry(
                row.tenant_id,
                row.incident_id,
                unknown.message(),
                {
                    "notification_id": row.id,
                    "user_id": row.user_id,
                    "channel": row.channel,
                    "attempts": str(row.attempts),
                    "tier": str(row.tier),
                    "status": UNKNOWN,
                    "error": "outcome unknown",
                },
                now,
            )
            outcomes.entries.append(entry)
            outcomes.changes.append(Change(row.tenant_id, row.service_id, row.incident_id, entry["id"]))
            outcomes.unknown.append(unknown)
        await bulk.execute_all(session, [(bulk.insert_into(TimelineEntry), outcomes.entries)])
        return outcomes

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
            delivery = _Delivery(
                row, page, destination, user_name=found.user_name, service_id=found.service_id
            )
            channel = self.plugins.channels.get(row.channel)
            if channel is None:
                delivery.error = f"no notification channel named {row.channel!r} is installed"
                delivery.retryable = False
            else:
                delivery.channel = channel
                delivery.at_most_once = _delivery_semantics(channel) != AT_LEAST_ONCE
            out.append(delivery)
        return out

    async def _send(self, delivery: _Delivery) -> None:
        channel = delivery.channel
        if delivery.page is None or delivery.destination is None or channel is None:
            return
        try:
            async with asyncio.timeout(self.send_timeout_seconds):
                await channel.send(delivery.page, delivery.destination)
        except TimeoutError:  # it may have gone out: an at-most-once page is not sent again
            delivery.error = (
                f"no answer within {self.send_timeout_seconds:g} s (ONCALL_NOTIFY_SEND_TIMEOUT_SECONDS)"
            )
            delivery.retryable, delivery.unknown = True, True
        except DeliveryError as exc:
            delivery.error, delivery.retryable = str(exc) or type(exc).__name__, exc.retryable
            delivery.unknown = isinstance(exc, OutcomeUnknown)
        except Exception as exc:  # a plugin bug must not stop other pages; the page may have gone out
            log.exception("channel %s failed", delivery.row.channel)
            delivery.error, delivery.retryable = f"{type(exc).__name__}: {exc}", True
            delivery.unknown = True

    def _retry_delay(self, attempts: int) -> float:
        return float(min(self.retry_base_seconds * 2 ** (attempts - 1), self.retry_max_seconds))

    async def _record(self, deliveries: list[_Delivery]) -> None:
        """Returns once the deliveries' outcomes are committed."""
        await self.recorder.record(self._outcomes(deliveries))

    def _outcomes(self, deliveries: list[_Delivery]) -> Outcomes:
        """The outbox updates, timeline entries and change-feed messages of sent (or failed) pages."""
        now = self.clock.now()
        updates: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        changes: list[Change] = []
        unknowns: list[UnknownOutcome] = []
        for delivery in deliveries:
            row = delivery.row
            who = delivery.user_name or row.user_id
            outcome = {
                "b_id": row.id,
                "b_attempts": row.attempts,
                "status": "sent",
                "sent_at": None,
                "next_attempt_at": row.next_attempt_at,
                "last_error": delivery.error,
            }
            if not delivery.error:
                outcome["sent_at"] = now
                message = f"Notified {who} via {row.channel}"
            elif delivery.unknown and delivery.at_most_once:
                unknown = UnknownOutcome(row.id, row.incident_id, row.channel, who, delivery.error)
                outcome["status"], message = UNKNOWN, unknown.message()
                unknowns.append(unknown)
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
            entry = timeline_entry(
                row.tenant_id,
                row.incident_id,
                message,
                {
                    "notification_id": row.id,
                    "user_id": row.user_id,
                    "channel": row.channel,
                    "attempts": str(row.attempts),
                    "tier": str(row.tier),
                    "status": str(outcome["status"]),
                    "error": delivery.error,
                },
                now,
            )
            entries.append(entry)
            if outcome["status"] == "retrying":
                outcome["status"] = "pending"
            updates.append(outcome)
            changes.append(Change(row.tenant_id, delivery.service_id, row.incident_id, entry["id"]))
        return Outcomes(updates, entries, changes, unknowns)


_notifications = cast(Table, Notification.__table__)
_RENEW_LEASE = update(_notifications).where(*STILL_OURS).values(lease_until=bindparam("b_until"))


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
