"""Tenants and the admin API tokens that act for them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server import security
from oncall_server.clock import Clock
from oncall_server.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from oncall_server.ids import uuid7
from oncall_server.storage.engine import write_transaction
from oncall_server.storage.models import ApiToken, Tenant

TOKEN_PREFIX = "oct_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token of one tenant."""

    tenant_id: str
    name: str


async def create_tenant(sessions: async_sessionmaker[AsyncSession], clock: Clock, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise InvalidArgument.field("name", "must not be empty")
    tenant = Tenant(id=uuid7(), name=name, created_at=clock.now())
    try:
        async with write_transaction(sessions) as session:
            session.add(tenant)
    except IntegrityError:
        raise AlreadyExists(f"a tenant named {name!r} already exists") from None
    return tenant


async def find_tenant(sessions: async_sessionmaker[AsyncSession], ref: str) -> Tenant:
    """A tenant by id or by name."""
    async with sessions() as session:
        tenant = await session.scalar(select(Tenant).where((Tenant.id == ref) | (Tenant.name == ref)))
    if tenant is None:
        raise NotFound(f"no tenant {ref!r}")
    return tenant


async def create_api_token(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, name: str
) -> tuple[str, ApiToken]:
    """A new token; the plain value is returned once and never stored."""
    secret = security.new_secret(TOKEN_PREFIX)
    token = ApiToken(
        id=uuid7(),
        tenant_id=tenant_id,
        name=name or "admin",
        token_digest=security.digest(secret),
        created_at=clock.now(),
    )
    async with write_transaction(sessions) as session:
        session.add(token)
    return secret, token


async def authenticate_token(sessions: async_sessionmaker[AsyncSession], bearer: str | None) -> Principal:
    """The principal for an ``authorization: Bearer`` value; UNAUTHENTICATED without saying why."""
    if not bearer or not bearer.startswith(TOKEN_PREFIX):
        raise Unauthenticated("a valid API token is required (authorization: Bearer <token>)")
    wanted = security.digest(bearer)
    async with sessions() as session:
        token = await session.scalar(select(ApiToken).where(ApiToken.token_digest == wanted))
    if token is None or token.revoked_at is not None or not security.matches(bearer, token.token_digest):
        raise Unauthenticated("a valid API token is required (authorization: Bearer <token>)")
    return Principal(token.tenant_id, token.name)
