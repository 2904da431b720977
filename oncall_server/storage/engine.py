"""Engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from oncall_server import failures
from oncall_server.storage import dialects
from oncall_server.storage.dialects import SQLITE_IMMEDIATE, SQLITE_NO_BEGIN

log = logging.getLogger(__name__)
T = TypeVar("T")
_WRITE_ATTEMPTS = 5


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


#: ``ONCALL_SQLITE_DRIVER`` values: our one-trip adapter (storage/sqlite_driver.py), or SQLAlchemy's
#: stock aiosqlite dialect, kept runnable so an SQLAlchemy or aiosqlite upgrade can be bisected.
SQLITE_DRIVERS = ("onehop", "stock")


def create_engine(url: str, *, pool_size: int = 10, sqlite_driver: str = "onehop") -> AsyncEngine:
    """An async engine with the settings its database needs for correctness (``storage.dialects``).

    ``sqlite_driver`` picks the aiosqlite adapter (one of :data:`SQLITE_DRIVERS`); ``pool_size`` is
    PostgreSQL's.
    """
    if sqlite_driver not in SQLITE_DRIVERS:
        raise ValueError(f"unknown SQLite driver {sqlite_driver!r}; choose from {list(SQLITE_DRIVERS)}")
    database = dialects.named(make_url(url).get_backend_name())
    return database.create_engine(url, pool_size=pool_size, sqlite_driver=sqlite_driver)


@asynccontextmanager
async def single_read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for exactly one SELECT, on the hot paths (every ingest batch, every page sent).

    On SQLite the statement runs as its own implicit transaction: no BEGIN before it and nothing
    to roll back after, two trips to the driver's thread fewer. A second statement on the
    connection would see a different snapshot, hence "single".
    """
    async with engine.connect() as conn:
        yield await conn.execution_options(**{SQLITE_NO_BEGIN: True})


def write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """What a write transaction holds besides the database's own locks: on SQLite, its one writer's
    :class:`~oncall_server.storage.dialects.SqliteWriteLock`; on PostgreSQL, nothing."""
    return dialects.of(engine).write_lock(engine)


@asynccontextmanager
async def write_transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A transaction that reads rows and then changes them; serialised on SQLite, row locks on PostgreSQL.

    Not reentrant: never open one inside another (on SQLite the second would wait for the first).
    """
    engine = sessions.kw["bind"]
    async with write_lock(engine), sessions.begin() as session:
        await session.connection(execution_options={SQLITE_IMMEDIATE: True})
        yield session


async def retrying_write(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = _WRITE_ATTEMPTS,
) -> T:
    """``work`` in a :func:`write_transaction`, run again from the start after a deadlock or
    serialization failure, so a person's action never fails because a concurrent one won the tie.

    ``work`` must touch nothing outside its session: a failed attempt leaves no trace.
    """
    for attempt in range(1, attempts + 1):
        try:
            async with write_transaction(sessions) as session:
                return await work(session)
        except DBAPIError as exc:
            if attempt == attempts or not failures.is_transient(exc):
                raise
            log.info(
                "write transaction hit %s (attempt %d); running it again", type(exc.orig).__name__, attempt
            )
            await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)  # the winner commits meanwhile
    raise AssertionError("unreachable")


@asynccontextmanager
async def write_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """:func:`write_transaction` for Core statements only: no ORM session around the connection.

    For the hot paths (the dispatcher records every batch of sends): a session's begin and commit
    cost more CPU than a connection's.
    """
    async with write_lock(engine), engine.connect() as conn:
        await conn.execution_options(**{SQLITE_IMMEDIATE: True})
        async with conn.begin():
            yield conn


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no lazy reloads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)
