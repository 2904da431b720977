"""Tenants and the admin API tokens that act for them.

A tenant's life: created active; **deactivated** (``oncall-server tenant deactivate``) its API
tokens and integration keys are refused (UNAUTHENTICATED / 401) and its escalations stop, while
its data stays; **activated** again, everything works as before (incidents whose escalation was
stopped stay stopped); **deleted** (``oncall-server tenant delete --yes``, only once deactivated)
every row of the tenant is gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Column, CursorResult, Delete, Select, Table, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server import failures, security
from oncall_server.clock import Clock
from oncall_server.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from oncall_server.ids import uuid7
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import ApiToken, Base, Incident, Notification, Tenant, TimelineEntry

log = logging.getLogger(__name__)

TOKEN_PREFIX = "oct_"
#: Rows removed per transaction when a tenant is deleted: other tenants' writes wait at most for one.
DELETE_BATCH_ROWS = 2000
_UNAUTHENTICATED = "a valid API token is required (authorization: Bearer <token>)"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token of one tenant."""

    tenant_id: str
    name: str


async def create_tenant(sessions: async_sessionmaker[AsyncSession], clock: Clock, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise InvalidArgument.field("name", "must not be empty")
    now = clock.now()

    async def work(session: AsyncSession) -> Tenant:
        tenant = Tenant(id=uuid7(), name=name, created_at=now)
        session.add(tenant)
        return tenant

    try:
        return await retrying_write(sessions, work)
    except IntegrityError as exc:
        raise failures.integrity_error(
            exc, taken=f"a tenant named {name!r} already exists", missing="the tenant refers to nothing"
        ) from None


async def find_tenant(sessions: async_sessionmaker[AsyncSession], ref: str) -> Tenant:
    """A tenant by id or by name, active or not."""
    async with sessions() as session:
        tenant = await session.scalar(select(Tenant).where((Tenant.id == ref) | (Tenant.name == ref)))
    if tenant is None:
        raise NotFound(f"no tenant {ref!r}")
    return tenant


async def list_tenants(sessions: async_sessionmaker[AsyncSession]) -> list[Tenant]:
    """Every tenant, oldest first."""
    async with sessions() as session:
        return list((await session.scalars(select(Tenant).order_by(Tenant.id))).all())


async def create_api_token(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, name: str
) -> tuple[str, ApiToken]:
    """A new token; the plain value is returned once and never stored.

    Refused for a deactivated tenant (the token would not work) and a missing one.
    """
    secret = security.new_secret(TOKEN_PREFIX)
    now = clock.now()

    async def work(session: AsyncSession) -> ApiToken:
        tenant = await session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        if tenant.deactivated_at is not None:
            raise FailedPrecondition(
                f"tenant {tenant.name!r} is deactivated; activate it first (oncall-server tenant activate)"
            )
        token = ApiToken(
            id=uuid7(),
            tenant_id=tenant_id,
            name=name or "admin",
            token_digest=security.digest(secret),
            created_at=now,
        )
        session.add(token)
        return token

    try:
        token = await retrying_write(sessions, work)
    except IntegrityError as exc:  # the tenant was deleted between the read and the commit
        raise failures.integrity_error(
            exc, taken="token digest collision", missing=f"no tenant {tenant_id!r}"
        ) from None
    return secret, token


async def authenticate_token(sessions: async_sessionmaker[AsyncSession], bearer: str | None) -> Principal:
    """The principal for an ``authorization: Bearer`` value; UNAUTHENTICATED without saying why.

    The token must be unrevoked and its tenant must exist and be active: one query, read on every
    call (no cache), so deactivating or deleting a tenant takes effect on the next call.
    """
    if not bearer or not bearer.startswith(TOKEN_PREFIX):
        raise Unauthenticated(_UNAUTHENTICATED)
    wanted = security.digest(bearer)
    async with sessions() as session:
        token = await session.scalar(
            select(ApiToken)
            .join(Tenant, Tenant.id == ApiToken.tenant_id)
            .where(ApiToken.token_digest == wanted, Tenant.deactivated_at.is_(None))
        )
    if token is None or token.revoked_at is not None or not security.matches(bearer, token.token_digest):
        raise Unauthenticated(_UNAUTHENTICATED)
    return Principal(token.tenant_id, token.name)


async def stop_paging(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, reason: str
) -> int:
    """Stop every running escalation of the tenant and cancel its unsent notifications.

    Each open incident with a pending step gets a new escalation run and no due step (what an
    acknowledgement does, without changing its status), so the scheduler's fencing drops the
    step it holds and the dispatcher never claims a page of the old run; a timeline note says
    why. Returns how many incidents were stopped.
    """

    async def work(session: AsyncSession) -> int:
        now = clock.now()
        incidents = (
            await session.scalars(
                select(Incident)
                .where(
                    Incident.tenant_id == tenant_id,
                    Incident.status != "resolved",
                    Incident.escalation_due_at.is_not(None),
                )
                .order_by(Incident.id)  # the order the scheduler locks them in
                .with_for_update()
            )
        ).all()
        for incident in incidents:
            incident.escalation_run += 1
            incident.escalation_due_at = None
            incident.updated_at = now
            session.add(
                TimelineEntry(
                    id=uuid7(),
                    tenant_id=tenant_id,
                    incident_id=incident.id,
                    kind="note",
                    actor="oncall-server",
                    message=f"Escalation stopped: {reason}",
                    details={"reason": reason},
                    created_at=now,
                )
            )
        await session.execute(
            update(Notification)
            .where(Notification.tenant_id == tenant_id, Notification.status == "pending")
            .values(status="cancelled", last_error=reason)
        )
        return len(incidents)

    return await retrying_write(sessions, work)


async def deactivate_tenant(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, ref: str
) -> tuple[Tenant, int]:
    """Refuse the tenant's tokens and keys from now on (keys cached by a server: within
    ``integrations.CACHE_SECONDS``) and stop its escalations; returns the tenant and how many
    escalations were stopped. Its data stays. Idempotent."""
    tenant = await find_tenant(sessions, ref)

    async def work(session: AsyncSession) -> Tenant:
        row = await session.get(Tenant, tenant.id, with_for_update=True)
        if row is None:
            raise NotFound(f"no tenant {ref!r}")
        if row.deactivated_at is None:
            row.deactivated_at = clock.now()
        return row

    row = await retrying_write(sessions, work)
    stopped = await stop_paging(sessions, clock, row.id, "tenant deactivated")
    log.warning("tenant %s (%r) deactivated; %d escalation(s) stopped", row.id, row.name, stopped)
    return row, stopped


async def activate_tenant(sessions: async_sessionmaker[AsyncSession], ref: str) -> Tenant:
    """Accept the tenant's tokens and keys again. Escalations stopped by the deactivation stay
    stopped; new alerts page as usual. Idempotent."""
    tenant = await find_tenant(sessions, ref)

    async def work(session: AsyncSession) -> Tenant:
        row = await session.get(Tenant, tenant.id, with_for_update=True)
        if row is None:
            raise NotFound(f"no tenant {ref!r}")
        row.deactivated_at = None
        return row

    row = await retrying_write(sessions, work)
    log.warning("tenant %s (%r) activated", row.id, row.name)
    return row


@dataclass(frozen=True, slots=True)
class _Owned:
    """How to find a tenant's rows in one table: by its own ``tenant_id`` column (``parent`` None),
    or by a foreign key ``column`` to a ``parent`` table that has one (alert deliveries)."""

    table: Table
    column: Column[Any]
    parent: Table | None = None

    def ids(self, tenant_id: str) -> Select[Any]:
        """SELECT of the ids of the tenant's rows."""
        if self.parent is None:
            return select(self.table.c.id).where(self.column == tenant_id)
        owners = select(self.parent.c.id).where(self.parent.c.tenant_id == tenant_id)
        return select(self.table.c.id).where(self.column.in_(owners))


def _tenant_tables() -> list[_Owned]:
    """Every table holding a tenant's rows, children first.

    A table is covered by its ``tenant_id`` column or its foreign key to a table that has one, so
    tables added later are covered without touching this code.
    """
    owned: list[_Owned] = []
    for table in reversed(Base.metadata.sorted_tables):
        if table.name == Tenant.__tablename__:
            continue
        if "tenant_id" in table.c:
            owned.append(_Owned(table, table.c.tenant_id))
            continue
        for fk in sorted(table.foreign_keys, key=lambda fk: fk.parent.name):
            parent = fk.column.table
            if isinstance(parent, Table) and "tenant_id" in parent.c:
                owned.append(_Owned(table, fk.parent, parent))
                break
    return owned


async def tenant_contents(sessions: async_sessionmaker[AsyncSession], tenant_id: str) -> dict[str, int]:
    """How many rows the tenant has, by table (tables without any left out)."""
    counts: dict[str, int] = {}
    async with sessions() as session:
        for owned in _tenant_tables():
            count = await session.scalar(select(func.count()).select_from(owned.ids(tenant_id).subquery()))
            if count:
                counts[owned.table.name] = int(count)
    return counts


async def delete_tenant(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    ref: str,
    *,
    batch_rows: int = DELETE_BATCH_ROWS,
    key_cache_seconds: float = 5.0,
) -> dict[str, int]:
    """Delete a deactivated tenant and every row it owns; returns the rows deleted by table.

    Refused (FAILED_PRECONDITION) while the tenant is active, and for ``key_cache_seconds`` after
    it was deactivated (servers may accept a key they cached until then): so nothing of the
    tenant is written while its rows go. Rows go children first in transactions of
    ``batch_rows`` (a big tenant never holds the write lock for long), the tenant row last. An
    interrupted delete leaves a deactivated tenant with fewer rows: run it again.
    """
    tenant = await find_tenant(sessions, ref)
    if tenant.deactivated_at is None:
        raise FailedPrecondition(
            f"tenant {tenant.name!r} is active; deactivate it first (oncall-server tenant deactivate)"
        )
    since = (clock.now() - tenant.deactivated_at).total_seconds()
    if since < key_cache_seconds:
        raise FailedPrecondition(
            f"tenant {tenant.name!r} was deactivated {max(since, 0):.1f}s ago; servers may accept its "
            f"cached integration keys for {key_cache_seconds:g}s after that: retry in "
            f"{key_cache_seconds - since:.0f}s"
        )
    deleted: dict[str, int] = {}
    for owned in _tenant_tables():
        batch = delete(owned.table).where(owned.table.c.id.in_(owned.ids(tenant.id).limit(batch_rows)))

        async def work(session: AsyncSession, batch: Delete = batch) -> int:
            result = cast(CursorResult[Any], await session.execute(batch))
            return int(result.rowcount or 0)

        while True:
            count = await retrying_write(sessions, work)
            if count:
                deleted[owned.table.name] = deleted.get(owned.table.name, 0) + count
            if count < batch_rows:
                break

    async def drop_tenant(session: AsyncSession) -> None:
        row = await session.get(Tenant, tenant.id, with_for_update=True)
        if row is None:
            return
        if row.deactivated_at is None:
            raise FailedPrecondition(f"tenant {tenant.name!r} was activated while it was being deleted")
        await session.execute(delete(Tenant).where(Tenant.id == tenant.id))

    try:
        await retrying_write(sessions, drop_tenant)
    except IntegrityError as exc:
        left = await tenant_contents(sessions, tenant.id)
        what = ", ".join(f"{table} ({count})" for table, count in left.items()) or "rows another writer added"
        raise failures.integrity_error(
            exc,
            taken="tenant row changed",
            missing=f"tenant {tenant.name!r} still has rows: {what}; run it again",
        ) from None
    deleted[Tenant.__tablename__] = 1
    log.warning("tenant %s (%r) deleted: %s", tenant.id, tenant.name, deleted)
    return deleted


def describe(tenant: Tenant) -> dict[str, str]:
    """A tenant as the CLI prints it."""
    return {
        "tenant_id": tenant.id,
        "name": tenant.name,
        "status": "deactivated" if tenant.deactivated_at is not None else "active",
        "created_at": tenant.created_at.isoformat(),
        "deactivated_at": _iso(tenant.deactivated_at),
    }


def _iso(when: datetime | None) -> str:
    return when.isoformat() if when is not None else ""
