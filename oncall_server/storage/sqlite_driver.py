"""aiosqlite, one thread hop per statement.

SQLAlchemy's aiosqlite adapter awaits aiosqlite once to make a cursor, once to
execute, once to fetch the rows and once to close the cursor: four trips to
the connection's thread and back to the event loop per statement, each a
queue put, a thread wake-up, a self-pipe write and a GIL hand-over. Profiles
of ingest showed those trips, not SQLite, as the largest cost of a SQLite
write (docs/performance.md). This adapter runs execute, fetch and close as
one function on the connection's thread and hands SQLAlchemy the finished
rows, so a statement costs one trip; a transaction's BEGIN and its writes
that return nothing ride with its next statement or its commit
(:class:`OneHopConnection`). Rollback and server-side cursors are
aiosqlite's own.

It builds on SQLAlchemy's aiosqlite adapter classes and aiosqlite's
``Connection._execute`` (the one entry point every aiosqlite call goes
through), which is why pyproject.toml bounds both versions.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, cast

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int]


# Statements run once per row of their list (executemany), in order.
WriteSteps = list[tuple[str, Sequence[Any]]]


@contextlib.contextmanager
def _cursor_after(
    connection: sqlite3.Connection, begin: str | None, writes: WriteSteps
) -> Iterator[sqlite3.Cursor]:
    """On the connection's thread: a cursor, after the transaction's deferred BEGIN and writes."""
    if begin is not None:
        connection.execute(begin)
    cursor = connection.cursor()
    try:
        _run_writes(cursor, writes)
        yield cursor
    finally:
        cursor.close()


def _run(
    connection: sqlite3.Connection,
    operation: str,
    parameters: Any,
    many: bool,
    begin: str | None,
    writes: WriteSteps,
) -> _Outcome:
    """On the connection's thread: what is deferred, then the statement, its rows fetched."""
    with _cursor_after(connection, begin, writes) as cursor:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid or 0


def _run_each(
    connection: sqlite3.Connection,
    operation: str,
    parameters: Sequence[Any],
    begin: str | None,
    writes: WriteSteps,
) -> list[Any]:
    """On the connection's thread: what is deferred, then the statement once per parameter tuple;
    every row it returned, in order."""
    rows: list[Any] = []
    with _cursor_after(connection, begin, writes) as cursor:
        for values in parameters:
            cursor.execute(operation, values)
            rows.extend(cursor.fetchall())
    return rows


def _commit(connection: sqlite3.Connection, begin: str | None, writes: WriteSteps) -> None:
    """On the connection's thread: what is deferred, then COMMIT."""
    with _cursor_after(connection, begin, writes):
        pass
    if connection.in_transaction:
        connection.commit()


def _run_writes(cursor: sqlite3.Cursor, writes: WriteSteps) -> None:
    for sql, rows in writes:
        try:
            cursor.executemany(sql, rows)
        except sqlite3.Error as error:
            # It surfaces in a later statement's or the commit's trip: say which write failed.
            error.add_note(f"in the deferred write: {sql}")
            raise


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statement ran to completion in one trip to the thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid = 0

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._complete(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> None:
        self._complete(operation, seq_of_parameters, many=True)

    def _complete(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        adapted = self._adapt_connection
        begin: str | None = None
        writes: WriteSteps = []
        if isinstance(adapted, OneHopConnection):
            begin, writes = adapted.take_deferred_begin(), adapted.take_deferred_writes()
        try:
            outcome: _Outcome = await_(
                connection._execute(_run, connection._conn, operation, parameters, many, begin, writes)  # type: ignore[no-untyped-call]
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """Nothing is open on the thread: the statement closed its cursor there."""


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """Statements in one trip each; BEGIN and result-less writes ride with the next trip.

    ``storage.engine`` hands BEGIN to :meth:`defer_begin` instead of executing it, and
    ``storage.bulk`` hands executemany writes whose rows nobody reads back to
    :meth:`defer_writes`: each was a trip of its own, of ~10 per ingest batch
    (docs/performance.md). They run, in order, at the start of the transaction's next trip,
    a statement's or the commit's. Deferring is safe because nothing outside the transaction
    can see them before the commit, and every statement of the transaction runs after them;
    a transaction that never runs a statement has nothing to begin, commit or roll back. A
    BEGIN IMMEDIATE that waits for the write lock now waits in its first statement, and a
    deferred write that fails raises from the next trip (its SQL in the error's notes).
    """

    __slots__ = ("_deferred_begin", "_deferred_writes")
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._deferred_begin: str | None = None
        self._deferred_writes: WriteSteps = []

    def defer_begin(self, statement: str) -> None:
        self._deferred_begin = statement

    def take_deferred_begin(self) -> str | None:
        begin, self._deferred_begin = self._deferred_begin, None
        return begin

    def defer_writes(self, writes: Sequence[tuple[str, Sequence[Any]]]) -> None:
        self._deferred_writes.extend(writes)

    def take_deferred_writes(self) -> WriteSteps:
        writes, self._deferred_writes = self._deferred_writes, []
        return writes

    async def run_each(self, operation: str, parameters: Sequence[Any]) -> list[Any]:
        """``operation`` once per parameter tuple in one trip (after what is deferred), its rows.

        Awaited directly, not through SQLAlchemy: for the ingest path's ``INSERT ... RETURNING``
        upserts (``storage.bulk.execute_returning``), whose execute, multi-row rendering and
        per-row parameter building in SQLAlchemy cost more CPU than SQLite's work.
        """
        connection = cast(aiosqlite.Connection, self._connection)
        begin, writes = self.take_deferred_begin(), self.take_deferred_writes()
        rows: list[Any] = await connection._execute(  # type: ignore[no-untyped-call]
            _run_each, connection._conn, operation, parameters, begin, writes
        )
        return rows

    def cursor(self, server_side: bool = False) -> Any:
        if server_side:  # aiosqlite's own cursor: what is deferred must run before it opens
            self._flush_deferred()
        return super().cursor(server_side)

    def commit(self) -> None:
        begin, writes = self.take_deferred_begin(), self.take_deferred_writes()
        if writes:
            connection = cast(aiosqlite.Connection, self._connection)
            try:
                await_(connection._execute(_commit, connection._conn, begin, writes))  # type: ignore[no-untyped-call]
            except Exception as error:
                self._handle_exception(error)
        elif self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back, after a commit too: skip the trip.
        self._deferred_begin = None
        self._deferred_writes = []
        if self._in_transaction():
            super().rollback()

    def _flush_deferred(self) -> None:
        if self._deferred_begin is not None or self._deferred_writes:
            self._cursor_cls(self).execute("SELECT 1")

    def _in_transaction(self) -> bool:
        """Whether the thread has anything to commit or roll back (sqlite3 does nothing otherwise).

        Read from this thread while the connection is idle: SQLAlchemy awaited its last statement.
        """
        driver: sqlite3.Connection | None = self._connection._connection
        return driver is not None and driver.in_transaction


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Pass as ``module=`` to ``create_async_engine`` for a ``sqlite+aiosqlite`` URL."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)
