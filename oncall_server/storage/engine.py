"""Engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from oncall_server import failures, json_codec
from oncall_server.storage.sqlite_driver import OneHopConnection, OneHopDBAPI

log = logging.getLogger(__name__)
T = TypeVar("T")
_WRITE_ATTEMPTS = 5


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


#: ``ONCALL_SQLITE_DRIVER`` values: our one-trip adapter (storage/sqlite_driver.py), or SQLAlchemy's
#: stock aiosqlite dialect, kept runnable so an SQLAlchemy or aiosqlite upgrade can be bisected.
SQLITE_DRIVERS = ("onehop", "stock")


def create_engine(url: str, *, pool_size: int = 10, sqlite_driver: str = "onehop") -> AsyncEngine:
    """An async engine with the settings each database needs for correctness.

    SQLite gets WAL (readers don't block the writer), enforced foreign keys,
    a busy timeout instead of instant "database is locked" errors, and
    synchronous=FULL so a committed alert survives power loss, not just a
    process crash. ``sqlite_driver`` picks the aiosqlite adapter (one of :data:`SQLITE_DRIVERS`).
    """
    if sqlite_driver not in SQLITE_DRIVERS:
        raise ValueError(f"unknown SQLite driver {sqlite_driver!r}; choose from {list(SQLITE_DRIVERS)}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        one_hop = sqlite_driver == "onehop" and parsed.get_driver_name() == "aiosqlite"
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            poolclass=NullPool if parsed.database == ":memory:" else None,
            module=OneHopDBAPI() if one_hop else None,
            json_serializer=json_codec.dumps,
            json_deserializer=json_codec.loads,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        json_serializer=json_codec.dumps,
        json_deserializer=json_codec.loads,
    )


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
    options = connection.get_execution_options()
    if options.get(_SQLITE_NO_BEGIN, False):
        return
    statement = "BEGIN IMMEDIATE" if options.get(SQLITE_IMMEDIATE, False) else "BEGIN"
    driver = connection.connection.dbapi_connection
    if isinstance(driver, OneHopConnection):
        driver.defer_begin(statement)  # runs in the same trip as the transaction's first statement
    else:
        connection.exec_driver_sql(statement)


SQLITE_IMMEDIATE = "oncall_sqlite_immediate"
_SQLITE_NO_BEGIN = "oncall_sqlite_no_begin"


@asynccontextmanager
async def single_read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for exactly one SELECT, on the hot paths (every ingest batch, every page sent).

    On SQLite the statement runs as its own implicit transaction: no BEGIN before it and nothing
    to roll back after, two trips to the driver's thread fewer. A second statement on the
    connection would see a different snapshot, hence "single".
    """
    async with engine.connect() as conn:
        yield await conn.execution_options(**{_SQLITE_NO_BEGIN: True})


class SqliteWriteLock:
    """This process's SQLite writers queue on an asyncio lock; processes queue on a file lock.

    SQLite has one writer; a connection that finds the lock taken sleeps in its busy handler
    (1, 2, 5 ... 100 ms steps) long after the lock is free, which showed as 1-3 s page latency
    spikes under load. Queuing on an asyncio lock hands the database over at once. Between
    processes (``ONCALL_WORKERS``, or a scheduler-only process beside the server) an ``flock`` on
    ``<database>-writelock`` does the same: the kernel wakes the next waiter when it is released.
    Only the task at the head of this process's queue ever waits for the file lock, in a thread.
    """

    def __init__(self, database: str | None) -> None:
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        if database and database != ":memory:" and not database.startswith("file:"):
            self._fd = os.open(f"{database}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
            weakref.finalize(self, os.close, self._fd)

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        try:
            if self._fd is not None:
                await self._lock_file(self._fd)
        except BaseException:
            self._lock.release()
            raise

    async def __aexit__(self, *_exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    @staticmethod
    async def _lock_file(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread takes the lock anyway: give it back as soon as it does.
            def give_back(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

            waiting.add_done_callback(give_back)
            raise


_sqlite_write_locks: weakref.WeakKeyDictionary[Engine, SqliteWriteLock] = weakref.WeakKeyDictionary()


def write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """What a write transaction holds on SQLite (see :class:`SqliteWriteLock`); PostgreSQL needs none."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    lock = _sqlite_write_locks.get(engine.sync_engine)
    if lock is None:
        lock = _sqlite_write_locks[engine.sync_engine] = SqliteWriteLock(engine.url.database)
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
    cost ~80 µs of CPU more than a connection's here.
    """
    async with write_lock(engine), engine.connect() as conn:
        await conn.execution_options(**{SQLITE_IMMEDIATE: True})
        async with conn.begin():
            yield conn


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no lazy reloads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)
