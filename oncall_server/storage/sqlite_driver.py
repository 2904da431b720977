"""aiosqlite, one thread hop per statement.

SQLAlchemy's aiosqlite adapter awaits aiosqlite once to make a cursor, once to
execute, once to fetch the rows and once to close the cursor: four trips to
the connection's thread and back to the event loop per statement, each a
queue put, a thread wake-up, a self-pipe write and a GIL hand-over. Profiles
of ingest showed those trips, not SQLite, as the largest cost of a SQLite
write (docs/performance.md). This adapter runs execute, fetch and close as
one function on the connection's thread and hands SQLAlchemy the finished
rows, so a statement costs one trip. Commit, rollback and server-side
cursors are aiosqlite's own.

It builds on SQLAlchemy's aiosqlite adapter classes and aiosqlite's
``Connection._execute`` (the one entry point every aiosqlite call goes
through), which is why pyproject.toml bounds both versions.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

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


class StatementScript(str):
    """Several executemany statements for one trip (``storage.bulk.execute_all``).

    A ``str`` so it passes through SQLAlchemy's ``exec_driver_sql`` (its events, logging and
    error wrapping) unchanged; the text is the statements joined, for logs and errors.
    """

    steps: Sequence[tuple[str, Sequence[Any]]]

    def __new__(cls, steps: Sequence[tuple[str, Sequence[Any]]]) -> StatementScript:
        script = super().__new__(cls, "; ".join(sql for sql, _ in steps))
        script.steps = steps
        return script


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool, begin: str | None
) -> _Outcome:
    """On the connection's thread: the transaction's deferred BEGIN if any, and the whole statement."""
    if begin is not None:
        connection.execute(begin)
    cursor = connection.cursor()
    try:
        if isinstance(operation, StatementScript):
            for sql, rows in operation.steps:
                cursor.executemany(sql, rows)
            return None, [], -1, 0
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid or 0
    finally:
        cursor.close()


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
        begin = adapted.take_deferred_begin() if isinstance(adapted, OneHopConnection) else None
        try:
            outcome: _Outcome = await_(
                connection._execute(_run, connection._conn, operation, parameters, many, begin)  # type: ignore[no-untyped-call]
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
    """Statements in one trip each; a transaction's BEGIN travels with its first statement.

    ``storage.engine`` hands BEGIN to :meth:`defer_begin` instead of executing it: a separate
    trip per transaction was one of ~15 per ingest batch (docs/performance.md). Deferring is
    safe because a transaction that never runs a statement has nothing to begin, commit or roll
    back; a BEGIN IMMEDIATE that waits for the write lock now waits in its first statement.
    """

    __slots__ = ("_deferred_begin",)
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._deferred_begin: str | None = None

    def defer_begin(self, statement: str) -> None:
        self._deferred_begin = statement

    def take_deferred_begin(self) -> str | None:
        begin, self._deferred_begin = self._deferred_begin, None
        return begin

    def cursor(self, server_side: bool = False) -> Any:
        if server_side:  # aiosqlite's own cursor: BEGIN must be on the connection before it runs
            begin = self.take_deferred_begin()
            if begin is not None:
                self._cursor_cls(self).execute(begin)
        return super().cursor(server_side)

    def commit(self) -> None:
        self._deferred_begin = None
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back, after a commit too: skip the trip.
        self._deferred_begin = None
        if self._in_transaction():
            super().rollback()

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
