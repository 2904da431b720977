"""What every configured object of a tenant shares: found by id within its tenant (NOT_FOUND for
another tenant's), listed a page at a time, and written with the database's word on names and
references turned into the caller's error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server import failures
from oncall_server.errors import NotFound
from oncall_server.ids import is_valid_id
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.listing import tenant_page
from oncall_server.storage.models import TenantOwned

Row = TypeVar("Row", bound=TenantOwned)
T = TypeVar("T")

Lock = Literal["update", "no_key_update"] | None
"""``update`` before deleting or rewriting a row; ``no_key_update`` before changing what hangs off
it, which does not block objects that only reference it (they take ``FOR KEY SHARE``)."""
_LOCK_OPTIONS: dict[str, dict[str, Any]] = {"update": {}, "no_key_update": {"key_share": True}}


async def load(
    session: AsyncSession, model: type[Row], kind: str, tenant_id: str, row_id: str, *, lock: Lock = None
) -> Row:
    """The tenant's ``kind`` ``row_id``, locked until commit as ``lock`` says."""
    if not is_valid_id(row_id):
        raise NotFound(f"{kind} {row_id!r} not found")
    query = select(model).where(model.id == row_id, model.tenant_id == tenant_id)
    if lock is not None:
        query = query.with_for_update(**_LOCK_OPTIONS[lock])
    row = await session.scalar(query)
    if row is None:
        raise NotFound(f"{kind} {row_id!r} not found")
    return row


async def get(
    sessions: async_sessionmaker[AsyncSession], model: type[Row], kind: str, tenant_id: str, row_id: str
) -> Row:
    async with sessions() as session:
        return await load(session, model, kind, tenant_id, row_id)


async def page(
    session: AsyncSession, model: type[Row], tenant_id: str, page_size: int, after: str | None
) -> list[Row]:
    return list((await session.scalars(tenant_page(model, tenant_id, page_size, after))).all())


async def list_page(
    sessions: async_sessionmaker[AsyncSession],
    model: type[Row],
    tenant_id: str,
    page_size: int,
    after: str | None,
) -> list[Row]:
    async with sessions() as session:
        return await page(session, model, tenant_id, page_size, after)


async def existing(
    session: AsyncSession, model: type[TenantOwned], tenant_id: str, row_ids: Sequence[str]
) -> set[str]:
    """Which of ``row_ids`` the tenant has; ``FOR KEY SHARE`` on them until commit, so what is being
    written can name them without their deletion crossing it."""
    wanted = sorted({row_id for row_id in row_ids if is_valid_id(row_id)})
    if not wanted:
        return set()
    query = (
        select(model.id)
        .where(model.tenant_id == tenant_id, model.id.in_(wanted))
        .with_for_update(read=True, key_share=True)
    )
    return set((await session.scalars(query)).all())


async def write(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    taken: str,
    missing: str,
) -> T:
    """:func:`~oncall_server.storage.engine.retrying_write`, with a unique violation answered
    ALREADY_EXISTS (``taken``) and a foreign-key one FAILED_PRECONDITION (``missing``)."""
    try:
        return await retrying_write(sessions, work)
    except IntegrityError as exc:
        raise failures.integrity_error(exc, taken=taken, missing=missing) from None
