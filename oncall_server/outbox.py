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
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.changes import Change, ChangeFeed
from oncall_server.clock import Clock
from oncall_server.hookspecs import DeliveryError, Destination, Page
from oncall_server.ids import uuid7
from oncall_server.ingest.model import IncidentStatus
from oncall_server.plugins import Plugins
from oncall_server.severity import Severity
from oncall_server.storage.engine import write_transaction
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
class PageRequest:
    """One decision to page people about an incident (an escalation step, a reassignment)."""

    incident: Incident
    user_ids: Sequence[str]
    kind: str
    key: str  # names the decision; with user, contact method and delay it forms the dedup key
    run: int
    tier: int
    loop: int


@dataclass(frozen=True, slots=True)
class Paged:
    """Who one request reached, for the timeline message."""

    user_names: list[str]
    notifications: int


async def enqueue_pages(session: AsyncSession, requests: Sequence[PageRequest], now: datetime) -> list[Paged]:
    """Write one outbox row per (user, notification rule) in the caller's transaction.

    Rows are unique on ``dedup_key``, so the same decision enqueued twice
    pages nobody twice. A user without rules is paged on every contact method
    at once. One call serves a whole batch of steps: three reads and one insert.
    """
    ids = list({user_id for request in requests for user_id in request.user_ids})
    if not ids:
        return [Paged([], 0) for _ in requests]
    users = {u.id: u for u in await session.scalars(select(User).where(User.id.in_(ids)))}
    methods: dict[str, list[ContactMethod]] = {}
    method_by_id: dict[str, ContactMethod] = {}
    for method in await session.scalars(
        select(ContactMethod).where(ContactMethod.user_id.in_(ids)).order_by(ContactMethod.id)
    ):
        methods.setdefault(method.user_id, []).append(method)
        method_by_id[method.id] = method
    rules: dict[str, list[tuple[str, int]]] = {}
    for rule in await session.scalars(
        select(NotificationRule).where(NotificationRule.user_id.in_(ids)).order_by(NotificationRule.id)
    ):
        if rule.contact_method_id in method_by_id:
            rules.setdefault(rule.user_id, []).append((rule.contact_method_id, rule.delay_seconds))
    rows: list[dict[str, Any]] = []
    results: list[Paged] = []
    for request in requests:
        incident = request.incident
        names: list[str] = []
        before = len(rows)
        for user_id in dict.fromkeys(request.user_ids):
            user = users.get(user_id)
            if user is None or user.tenant_id != incident.tenant_id:
                continue
            names.append(user.name)
            chosen = rules.get(user_id) or [(m.id, 0) for m in methods.get(user_id, [])]
            for method_id, delay in chosen:
                rows.append(
                    {
                        "id": uuid7(),
                        "tenant_id": incident.tenant_id,
                        "incident_id": incident.id,
                        "kind": request.kind,
                        "dedup_key": f"{request.key}:{user_id}:{method_id}:{delay}",
                        "escalation_run": request.run,
                        "tier": request.tier,
                        "loop": request.loop,
                        "user_id": user_id,
                        "contact_method_id": method_id,
                        "channel": method_by_id[method_id].type,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now + timedelta(seconds=delay),
                        "lease_until": None,
                        "last_error": "",
                        "created_at": now,
                        "sent_at": None,
                    }
                )
        results.append(Paged(names, len(rows) - before))
    if rows:
        dialect = session.get_bind().dialect.name
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(
            dialect_insert(Notification).on_conflict_do_nothing(index_elements=["dedup_key"]), rows
        )
    return results


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


@dataclass(slots=True)
class _Delivery:
    row: Notification
    page: Page | None
    destination: Destination | None
    error: str = ""
    retryable: bool = True
    user_name: str = ""
    service_id: str = ""


class Dispatcher:
    """Sends claimed outbox rows through the channel plugins, and records what happened."""

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
        self._wakeup = asyncio.Event()
        self.on_sent: list[Callable[[Notification], None]] = []

    def wake(self) -> None:
        self._wakeup.set()

    async def run_forever(self, stopping: asyncio.Event) -> None:
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

    async def run_once(self) -> int:
        """Claim, send and record one batch; returns how many rows it handled."""
        claimed = await self._claim()
        if not claimed:
            return 0
        deliveries = await self._prepare(claimed)
        await asyncio.gather(*(self._send(d) for d in deliveries))
        await self._record(deliveries)
        return len(claimed)

    async def _claim(self) -> list[Notification]:
        now = self.clock.now()
        claimable = and_(
            Notification.next_attempt_at <= now,
            or_(
                Notification.status == "pending",
                and_(Notification.status == "sending", Notification.lease_until < now),
            ),
        )
        async with write_transaction(self.sessions) as session:
            # Rows their incident no longer wants (acknowledged, resolved, a newer run) are cancelled.
            await session.execute(
                update(Notification)
                .where(claimable, ~_deliverable())
                .values(status="cancelled", last_error="the incident no longer escalates")
                .execution_options(synchronize_session=False)
            )
            candidates = (
                select(Notification.id)
                .where(claimable, _deliverable())
                .order_by(Notification.next_attempt_at)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True, of=Notification)
            )
            rows = await session.scalars(
                update(Notification)
                .where(Notification.id.in_(candidates.scalar_subquery()))
                .values(status="sending", lease_until=now + self.lease, attempts=Notification.attempts + 1)
                .returning(Notification)
                .execution_options(synchronize_session=False)
            )
            return list(rows.all())

    async def _prepare(self, claimed: list[Notification]) -> list[_Delivery]:
        incident_ids = {n.incident_id for n in claimed}
        async with self.sessions() as session:
            incidents = {
                i.id: i for i in await session.scalars(select(Incident).where(Incident.id.in_(incident_ids)))
            }
            services = {
                s.id: s
                for s in await session.scalars(
                    select(Service).where(Service.id.in_({i.service_id for i in incidents.values()}))
                )
            }
            users = {
                u.id: u
                for u in await session.scalars(select(User).where(User.id.in_({n.user_id for n in claimed})))
            }
            methods = {
                m.id: m
                for m in await session.scalars(
                    select(ContactMethod).where(ContactMethod.id.in_({n.contact_method_id for n in claimed}))
                )
            }
        out = []
        for row in claimed:
            incident, user, method = (
                incidents[row.incident_id],
                users.get(row.user_id),
                methods.get(row.contact_method_id),
            )
            if user is None or method is None:
                out.append(
                    _Delivery(
                        row,
                        None,
                        None,
                        "the user or contact method was deleted",
                        False,
                        "",
                        incident.service_id,
                    )
                )
                continue
            service = services.get(incident.service_id)
            page = build_page(row, incident, service, user, self.public_url)
            destination = Destination(method.id, method.type, method.address, method.secret)
            out.append(_Delivery(row, page, destination, user_name=user.name, service_id=incident.service_id))
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
        """Every outcome in one transaction: executemany updates and timeline inserts."""
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
        async with write_transaction(self.sessions) as session:
            await session.execute(_RECORD_OUTCOME, updates)
            await session.execute(insert(TimelineEntry), entries)
        await self.changes.publish(changes)
        for delivery in deliveries:
            if not delivery.error:
                for listener in self.on_sent:
                    listener(delivery.row)


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


def build_page(
    row: Notification, incident: Incident, service: Service | None, user: User, public_url: str
) -> Page:
    """The message content the spec asks for, from the incident as it is now."""
    details = incident.details or {}
    return Page(
        notification_id=row.id,
        kind=row.kind,
        tenant_id=incident.tenant_id,
        incident_id=incident.id,
        incident_url=incident_url(public_url, incident.id),
        title=incident.title,
        severity=Severity(incident.severity).label,
        status=incident.status,
        service_id=incident.service_id,
        service_name=service.name if service else "",
        description=incident.description,
        source=incident.source,
        source_ref=incident.source_ref,
        device_name=str(details.get("device_name", "")),
        detection_type=str(details.get("detection_type", "")),
        mitre_technique=str(details.get("mitre_technique", "")),
        recommended_action=str(details.get("recommended_action", "")),
        defend_url=str(details.get("defend_url", "")),
        tier=row.tier + 1 if row.kind == PAGE else 0,
        loop=row.loop,
        user_id=user.id,
        user_name=user.name,
        user_email=user.email,
        created_at=row.created_at,
    )
