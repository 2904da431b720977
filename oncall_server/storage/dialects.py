"""What differs between SQLite and PostgreSQL, as one object per database.

Callers ask the object (:func:`named`, :func:`of`) instead of comparing dialect names, so each
difference is written once, here, and a database we do not support is refused with one message
wherever it is first met.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import weakref
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from oncall_server import json_codec
from oncall_server.errors import Unavailable
from oncall_server.storage.sqlite_driver import OneHopConnection, OneHopDBAPI

#: Execution option: the transaction reads, then writes; SQLite begins it ``IMMEDIATE``.
SQLITE_IMMEDIATE = "oncall_sqlite_immediate"
#: Execution option: one statement, run as its own implicit transaction (``engine.single_read``).
SQLITE_NO_BEGIN = "oncall_sqlite_no_begin"


class _HasDialect(Protocol):
    @property
    def dialect(self) -> Any: ...


class Database:
    """One database's answers to what the storage layer and the ingest path must do differently."""

    name: ClassVar[str]
    #: Statements may be handed to the one-trip driver connection (``bulk``), when it is in use.
    one_trip: ClassVar[bool]
    #: ``SELECT ... FOR UPDATE`` locks rows; without it, whole write transactions are serialised.
    row_locks: ClassVar[bool]
    #: Alembic must alter tables by copying them (``render_as_batch``): no ``ALTER`` for most changes.
    batch_alter: ClassVar[bool]

    def insert(self, table: Any) -> postgresql.Insert | sqlite.Insert:
        """``INSERT`` with this database's ``ON CONFLICT`` clauses (upserts, do-nothing inserts)."""
        raise NotImplementedError

    def create_engine(self, url: str, *, pool_size: int, sqlite_driver: str) -> AsyncEngine:
        """An engine with the settings this database needs for correctness."""
        raise NotImplementedError

    def write_lock(self, engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
        """What a write transaction holds besides the database's own locks."""
        return contextlib.nullcontext()

    def lock_migrations(self, connection: Connection, lock_id: int) -> None:
        """Serialise migrations of processes starting together, until the transaction ends."""


class SqliteDatabase(Database):
    name = "sqlite"
    one_trip = True
    row_locks = False
    batch_alter = True

    def insert(self, table: Any) -> sqlite.Insert:
        return sqlite.insert(table)

    def create_engine(self, url: str, *, pool_size: int, sqlite_driver: str) -> AsyncEngine:
        """WAL (readers don't block the writer), enforced foreign keys, a busy timeout instead of
        instant "database is locked" errors, and synchronous=FULL so a committed alert survives
        power loss, not just a process crash. ``sqlite_driver`` picks the aiosqlite adapter."""
        parsed = make_url(url)
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

    def write_lock(self, engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
        """The engine's :class:`SqliteWriteLock`: SQLite has one writer."""
        lock = _sqlite_write_locks.get(engine.sync_engine)
        if lock is None:
            lock = _sqlite_write_locks[engine.sync_engine] = SqliteWriteLock(engine.url.database)
        return lock

    # lock_migrations: nothing to take (``ONCALL_WORKERS`` migrates once, before starting the others).


class PostgresqlDatabase(Database):
    name = "postgresql"
    one_trip = False
    row_locks = True
    batch_alter = False

    def insert(self, table: Any) -> postgresql.Insert:
        return postgresql.insert(table)

    def create_engine(self, url: str, *, pool_size: int, sqlite_driver: str) -> AsyncEngine:
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            json_serializer=json_codec.dumps,
            json_deserializer=json_codec.loads,
        )

    def lock_migrations(self, connection: Connection, lock_id: int) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


SQLITE = SqliteDatabase()
POSTGRESQL = PostgresqlDatabase()
_BY_NAME: dict[str, Database] = {SQLITE.name: SQLITE, POSTGRESQL.name: POSTGRESQL}


def named(name: str) -> Database:
    """The database of a dialect name (``engine.dialect.name``, a URL's backend name)."""
    database = _BY_NAME.get(name)
    if database is None:
        raise Unavailable(f"unsupported database dialect {name}")
    return database


def of(bind: _HasDialect) -> Database:
    """The database behind an engine or connection (sync or async)."""
    return named(bind.dialect.name)


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
    if options.get(SQLITE_NO_BEGIN, False):
        return
    statement = "BEGIN IMMEDIATE" if options.get(SQLITE_IMMEDIATE, False) else "BEGIN"
    driver = connection.connection.dbapi_connection
    if isinstance(driver, OneHopConnection):
        driver.defer_begin(statement)  # runs in the same trip as the transaction's first statement
    else:
        connection.exec_driver_sql(statement)


class SqliteWriteLock:
    """This process's SQLite writers queue on an asyncio lock; processes queue on a file lock.

    SQLite has one writer; a connection that finds the lock taken sleeps in its busy handler, in
    growing steps, long after the lock is free (page latency spikes under load,
    docs/performance.md). Queuing on an asyncio lock hands the database over at once. Between
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
