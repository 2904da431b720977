"""What every configured object of a tenant shares: found by id within its tenant (NOT_FOUND for
another tenant's), listed a page at a time, and written with the database's word on names and
references turned into the caller's error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

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


async def load(
    session: AsyncSession, model: type[Row], kind: str, tenant_id: str, row_id: str, *, lock: bool = False
) -> Row:
    """The tenant's ``kind`` ``row_id``; ``lock``: FOR UPDATE until commit."""
    if not is_valid_id(row_id):
        raise NotFound(f"{kind} {row_id!r} not found")
    query = select(model).where(model.id == row_id, model.tenant_id == tenant_id)
    row = await session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"{kind} {row_id!r} not found")
    return row


async def get(
    sessions: async_sessionmaker[AsyncSession], model: type[Row], kind: str, tenant_id: str, row_id: str
) -> Row:
    async with sessions() as session:
        return await load(session, model, kind, tenant_id, row_id)


async def list_page(
    sessions: async_sessionmaker[AsyncSession],
    model: type[Row],
    tenant_id: str,
    page_size: int,
    after: str | None,
) -> list[Row]:
    async with sessions() as session:
        return list((await session.scalars(tenant_page(model, tenant_id, page_size, after))).all())


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
