"""Engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine with the settings each database needs for correctness.

    SQLite gets WAL (readers don't block the writer), enforced foreign keys,
    a busy timeout instead of instant "database is locked" errors, and
    synchronous=FULL so a committed alert survives power loss, not just a
    process crash.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, poolclass=NullPool if parsed.database == ":memory:" else None)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is off: _sqlite_begin issues it, IMMEDIATE when asked.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA foreign_keys=ON",
        "PRAGMA busy_timeout=10000",
        "PRAGMA synchronous=FULL",
    ):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    """Read-modify-write transactions take the write lock up front (``BEGIN IMMEDIATE``).

    A deferred transaction that reads, then writes after another connection
    committed fails at once with SQLITE_BUSY (no busy wait can help it);
    an immediate one queues on the busy timeout instead.
    """
    immediate = connection.get_execution_options().get(SQLITE_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


SQLITE_IMMEDIATE = "oncall_sqlite_immediate"


_sqlite_write_locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """Serialises this process's SQLite writers in asyncio instead of in SQLite's busy handler.

    SQLite has one writer; a connection that finds the lock taken sleeps in its busy handler
    (1, 2, 5 ... 100 ms steps) long after the lock is free, which showed as 1-3 s page latency
    spikes under load. Queuing on an asyncio lock hands the database over at once. Other
    processes still meet the busy handler; PostgreSQL needs none of this.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    lock = _sqlite_write_locks.get(engine.sync_engine)
    if lock is None:
        lock = _sqlite_write_locks[engine.sync_engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def write_transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A transaction that reads rows and then changes them; serialised on SQLite, row locks on PostgreSQL.

    Not reentrant: never open one inside another (on SQLite the second would wait for the first).
    """
    engine = sessions.kw["bind"]
    async with write_lock(engine), sessions.begin() as session:
        await session.connection(execution_options={SQLITE_IMMEDIATE: True})
        yield session


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no lazy reloads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)
