"""The ingest path's statements, without SQLAlchemy's per-statement and per-row work.

``conn.execute(statement, rows)`` builds a dict of every bind per row
(``construct_params``) and then a list of processed values from it, and ingest
writes several rows per new incident (timeline entries, escalation and outcome
updates): under batched webhook load that was a large share of server CPU
(docs/performance.md). Here the statement is compiled once per dialect and set
of keys, each row becomes a tuple through one ``itemgetter`` plus the columns'
own bind processors (the same converters SQLAlchemy applies), and the driver
runs it.

Three shapes: writes whose rows nobody reads back (:func:`execute_all`),
``INSERT ... RETURNING`` upserts (:func:`execute_returning`) and SELECTs by
a list of keys (:func:`fetch_by_keys`). Where the dialect allows it
(``storage.dialects``: SQLite) each goes to the driver's thread in one trip
without passing through SQLAlchemy's execute, and the writes wait for the
transaction's next trip; on PostgreSQL they run through SQLAlchemy as before.

Only statements whose every bind the rows supply qualify: no Python-side
column defaults are filled in here, so a missing key is a programming error
and raises at once. Drivers without positional parameters fall back to
``execute``.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.expression import Executable

from oncall_server.storage import dialects
from oncall_server.storage.sqlite_driver import OneHopConnection

# Paging runs in a writer's connection or in a session's transaction: these statements serve both.
Executor = AsyncConnection | AsyncSession


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    values_of: Callable[[Mapping[str, Any]], Any]  # the row's values in bind order (a tuple if several)
    single: bool  # one value from the row: ``values_of`` returns it, not a 1-tuple
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # by index into the row's values
    template: tuple[Any, ...] | None  # with constants (``status = 'sending'``): all binds, row's left None
    row_positions: tuple[int, ...]  # where the row's values go in ``template``


@functools.lru_cache(maxsize=128)
def _compile(
    statement: Executable, dialect: Dialect, keys: tuple[str, ...], *, many: bool = False
) -> _Compiled | None:
    """``many``: for executemany of rows nobody reads back (no implicit RETURNING of a generated key)."""
    compiled = statement.compile(  # type: ignore[attr-defined]
        dialect=dialect, column_keys=list(keys), for_executemany=many
    )
    if not compiled.positional or not compiled.positiontup:
        return None
    defaulted = [c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
    if defaulted:
        raise KeyError(f"rows for {compiled.string!r} lack {defaulted}: bulk.executemany fills no defaults")
    order: list[str] = list(compiled.positiontup)
    template: list[Any] = [None] * len(order)
    from_row: list[int] = []
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(order):
        bind = compiled.binds[name]
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name in keys:
            if convert is not None:
                processors.append((len(from_row), convert))
            from_row.append(index)
        elif bind.required or bind.callable is not None:
            raise KeyError(f"rows for {compiled.string!r} lack {name!r}")
        else:  # a constant of the statement itself
            template[index] = bind.value if convert is None else convert(bind.value)
    constants = len(from_row) < len(order)
    return _Compiled(
        compiled.string,
        itemgetter(*(order[i] for i in from_row)),
        len(from_row) == 1,
        tuple(processors),
        tuple(template) if constants else None,
        tuple(from_row),
    )


_inserts: dict[type[Any], Executable] = {}


def insert_into(model: type[Any]) -> Executable:
    """``INSERT INTO`` the model's table: one statement object per model, so its compiled form is cached.

    Rows for it must give every column that has a default.
    """
    statement = _inserts.get(model)
    if statement is None:
        statement = _inserts[model] = insert(model)
    return statement


# Statements to run in order, each once per row of its list.
Writes = Sequence[tuple[Executable, Sequence[Mapping[str, Any]]]]


async def insert_rows(executor: Executor, model: type[Any], rows: Sequence[Mapping[str, Any]]) -> None:
    await execute_all(executor, [(insert_into(model), rows)])


async def executemany(executor: Executor, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run ``statement`` once per row in the executor's transaction; every row has the same keys."""
    await execute_all(executor, [(statement, rows)])


async def execute_all(executor: Executor, writes: Writes) -> None:
    """Every statement of ``writes`` in order, in the executor's transaction; no rows come back.

    On SQLite they do not travel to the driver's thread now but with the transaction's next
    trip there, a statement's or the commit's (``OneHopConnection.defer_writes``): each trip is
    a thread hand-off. A failing write therefore raises from that later statement or the
    commit, which rolls the transaction back as usual.
    """
    conn = executor if isinstance(executor, AsyncConnection) else await executor.connection()
    steps: list[tuple[str, list[tuple[Any, ...]]]] = []
    for statement, rows in writes:
        if not rows:
            continue
        keys = tuple(rows[0])
        if any(len(row) != len(keys) for row in rows):
            raise ValueError(f"bulk: rows differ in their keys (first row: {keys})")
        prepared = _compile(statement, conn.dialect, keys, many=True)
        if prepared is None:  # a driver without positional parameters
            await _run_steps(conn, steps)
            steps = []
            await conn.execute(statement, list(rows))
            continue
        steps.append((prepared.sql, _parameters(prepared, rows)))
    await _run_steps(conn, steps)


async def execute_returning(
    executor: Executor, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """``statement`` (an ``INSERT ... RETURNING``) for every row, in the executor's transaction;
    the rows it returned, as plain tuples.

    On SQLite it runs once per row in one trip to the driver's thread, past SQLAlchemy (see
    ``OneHopConnection.run_each``); errors are SQLAlchemy's all the same. Returned columns get
    no result processing, so only columns read back as stored (text, integers) may be returned:
    anything else is refused when the statement is first compiled.
    """
    if not rows:
        return []
    conn = executor if isinstance(executor, AsyncConnection) else await executor.connection()
    if not _returns_plain_columns(statement, conn.dialect):
        raise TypeError(f"bulk.execute_returning cannot run {statement}: it must return plain columns")
    driver = await _one_hop_driver(conn)
    if driver is None:
        return [tuple(row) for row in await conn.execute(statement, list(rows))]
    return await _run_each(driver, statement, conn.dialect, rows)


async def _run_each(
    driver: OneHopConnection, statement: Executable, dialect: Dialect, rows: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """``statement`` once per row in one trip to SQLite's thread; its rows, unprocessed."""
    prepared = _compile(statement, dialect, tuple(rows[0]))
    if prepared is None:
        raise TypeError(f"bulk cannot run {statement}: no positional parameters")
    parameters = _parameters(prepared, rows)
    try:
        return await driver.run_each(prepared.sql, parameters)
    except sqlite3.Error as error:
        raise DBAPIError.instance(prepared.sql, parameters, error, sqlite3.Error) from error


@functools.lru_cache(maxsize=32)
def _returns_plain_columns(statement: Executable, dialect: Dialect) -> bool:
    columns = getattr(statement, "_returning", ())
    return bool(columns) and all(
        column.type.dialect_impl(dialect).result_processor(dialect, None) is None for column in columns
    )


async def _one_hop_driver(conn: AsyncConnection) -> OneHopConnection | None:
    """The one-trip driver connection under ``conn`` (SQLite's) with its transaction begun; else None."""
    if not dialects.of(conn).one_trip:
        return None
    if not conn.in_transaction():
        await conn.begin()  # as a statement would autobegin: the commit then carries the writes
    driver = conn.sync_connection.connection.dbapi_connection if conn.sync_connection else None
    return driver if isinstance(driver, OneHopConnection) else None


_HasIn = ColumnElement[Any] | InstrumentedAttribute[Any]
AnySelect = Select[*tuple[Any, ...]]


class KeyedSelect:
    """A SELECT of the rows matching a list of keys, in the two forms that serve it best.

    ``IN (:keys)`` is one round trip on any database, but SQLAlchemy expands and renders the
    list on every execution; on SQLite ``= :key`` once per key runs in one trip to the driver's
    thread past SQLAlchemy, for less CPU (docs/performance.md). Rows come back with attribute
    access either way, and each row once.
    """

    def __init__(self, query: AnySelect, column: _HasIn, name: str) -> None:
        self.name = name
        self.by_keys = query.where(column.in_(bindparam(name, expanding=True)))
        self.by_key = query.where(column == bindparam(name))
        self.row_type: Any = namedtuple("Row", list(query.selected_columns.keys()), rename=True)  # type: ignore[misc]


async def fetch_by_keys(
    executor: Executor, query: KeyedSelect, keys: Iterable[Any], **parameters: Any
) -> Sequence[Any]:
    """The rows of ``query`` for ``keys``, its other bind parameters from ``parameters``."""
    unique = list(dict.fromkeys(keys))
    if not unique:
        return []
    conn = executor if isinstance(executor, AsyncConnection) else await executor.connection()
    driver = await _one_hop_driver(conn)
    if driver is None:
        found: Sequence[Any] = (await conn.execute(query.by_keys, {**parameters, query.name: unique})).all()
        return found
    rows = await _run_each(
        driver, query.by_key, conn.dialect, [{**parameters, query.name: key} for key in unique]
    )
    convert = _result_processors(query.by_key, conn.dialect)
    make = query.row_type._make
    if not convert:
        return [make(row) for row in rows]
    return [make([f(v) if f else v for f, v in zip(convert, row, strict=True)]) for row in rows]


@functools.lru_cache(maxsize=32)
def _result_processors(statement: AnySelect, dialect: Dialect) -> tuple[Callable[[Any], Any] | None, ...]:
    """What SQLAlchemy applies to each selected column's value (JSON text, timestamps); () if none."""
    processors = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.selected_columns
    )
    return processors if any(processors) else ()


async def _run_steps(conn: AsyncConnection, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
    if not steps:
        return
    driver = await _one_hop_driver(conn)
    if driver is not None:
        driver.defer_writes(steps)
        return
    for sql, parameters in steps:
        await conn.exec_driver_sql(sql, parameters)


def _parameters(prepared: _Compiled, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    values_of, processors, template = prepared.values_of, prepared.processors, prepared.template
    parameters: list[tuple[Any, ...]] = []
    for row in rows:
        values = (values_of(row),) if prepared.single else values_of(row)
        if processors:
            values = list(values)
            for index, convert in processors:
                values[index] = convert(values[index])
        if template is not None:
            filled = list(template)
            for position, value in zip(prepared.row_positions, values, strict=True):
                filled[position] = value
            values = filled
        parameters.append(tuple(values))
    return parameters
