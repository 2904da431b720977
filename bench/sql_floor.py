"""SQLite's own share of ingest: the exact statements of N new paged incidents, replayed bare.

Runs `paging_inprocess`'s workload (new incidents, each paging a ``log`` user through a one-tier
policy, batches of B) on the real App while recording every call that reaches SQLite's thread:
each statement with its parameters, each deferred BEGIN, each COMMIT. Then it replays that record
with Python's ``sqlite3`` alone (same schema, pragmas and transactions, no SQLAlchemy, no
asyncio, no Redis) into a fresh copy of the database as it was before the workload, and prints
both: process CPU per incident with everything, and SQLite's CPU (and wall time, fsyncs
included) per incident for the durable work alone. The replay is the floor the writes of this
schema put under ingest on one core, whatever the Python around them does.

    .venv/bin/python bench/sql_floor.py --incidents 5000 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
from paging_inprocess import ingest_new_incidents, paged_service

from oncall_server.redis_embedded import EmbeddedRedis
from oncall_server.storage import sqlite_driver

Call = tuple[str, Any, bool]  # (SQL, parameters, executemany)


@contextlib.contextmanager
def recording_sqlite_calls(calls: list[Call]) -> Iterator[None]:
    """Inside, append what each trip to SQLite's thread runs to ``calls``."""
    run, run_each, commit = sqlite_driver._run, sqlite_driver._run_each, sqlite_driver._commit

    def record_deferred(begin: str | None, writes: sqlite_driver.WriteSteps) -> None:
        if begin is not None:
            calls.append((begin, None, False))
        calls.extend((sql, rows, True) for sql, rows in writes)

    def recording_run(
        connection: sqlite3.Connection,
        operation: str,
        parameters: Any,
        many: bool,
        begin: str | None,
        writes: sqlite_driver.WriteSteps,
    ) -> Any:
        record_deferred(begin, writes)
        calls.append((str(operation), parameters, many))
        return run(connection, operation, parameters, many, begin, writes)

    def recording_run_each(
        connection: sqlite3.Connection,
        operation: str,
        parameters: Sequence[Any],
        begin: str | None,
        writes: sqlite_driver.WriteSteps,
    ) -> list[Any]:
        record_deferred(begin, writes)
        calls.extend((operation, values, False) for values in parameters)
        return run_each(connection, operation, parameters, begin, writes)

    def recording_commit(
        connection: sqlite3.Connection, begin: str | None, writes: sqlite_driver.WriteSteps
    ) -> None:
        record_deferred(begin, writes)
        calls.append(("COMMIT", None, False))
        commit(connection, begin, writes)

    sqlite_driver._run = recording_run
    sqlite_driver._commit = recording_commit
    sqlite_driver._run_each = recording_run_each
    # aiosqlite leaves this private coroutine method unannotated: (self, fn, *args, **kwargs) -> result
    execute: Callable[..., Coroutine[Any, Any, Any]] = aiosqlite.Connection._execute

    async def recording_execute(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__name__", "")
        if name in ("commit", "rollback"):
            calls.append((name.upper(), None, False))
        return await execute(self, fn, *args, **kwargs)

    aiosqlite.Connection._execute = recording_execute  # type: ignore[method-assign]
    try:
        yield
    finally:
        sqlite_driver._run = run
        sqlite_driver._commit = commit
        sqlite_driver._run_each = run_each
        aiosqlite.Connection._execute = execute  # type: ignore[method-assign]


def replay(database: Path, calls: list[Call]) -> tuple[float, float]:
    """Run ``calls`` on ``database`` with bare sqlite3, on one connection; returns (CPU s, wall s).

    The server spreads them over a pooled writer and readers; on one connection a reader's
    SELECT may land inside a write transaction, which costs SQLite the same work.
    """
    connection = sqlite3.connect(database, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000", "synchronous=FULL"):
        connection.execute(f"PRAGMA {pragma}")
    cpu, wall = time.process_time(), time.perf_counter()
    for sql, parameters, many in calls:
        if sql.startswith("PRAGMA"):
            continue  # a new pooled connection's set-up, done above once
        if sql in ("COMMIT", "ROLLBACK"):
            if connection.in_transaction:
                connection.commit() if sql == "COMMIT" else connection.rollback()
        else:  # as the server's driver runs it on SQLite's thread, rows fetched
            sqlite_driver._run(connection, sql, parameters, many, None, [])
    elapsed = time.process_time() - cpu, time.perf_counter() - wall
    connection.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--incidents", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("oncall.notifications").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-floor-", dir="/tmp") as tmp:
        data = Path(tmp)
        database = data / "bench.db"
        async with (
            EmbeddedRedis(data) as redis,
            paged_service(f"sqlite+aiosqlite:///{database}", redis.url, data) as (app, tenant),
        ):
            await app.engine.dispose()  # every page of the database in its main file
            before = data / "before.db"
            with sqlite3.connect(database) as raw:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            shutil.copyfile(database, before)
            calls: list[Call] = []
            with recording_sqlite_calls(calls):
                cpu, wall = time.process_time(), time.perf_counter()
                await ingest_new_incidents(app, tenant, args.incidents, args.batch)
                full_cpu, full_wall = time.process_time() - cpu, time.perf_counter() - wall
        sql_cpu, sql_wall = replay(before, calls)
    n = args.incidents
    per = 1e6 / n
    print(f"{n} new paged incidents, batches of {args.batch}, {len(calls)} SQLite calls recorded")
    print(
        f"  everything, in process:       {full_cpu * per:7.0f} µs CPU per incident"
        f" ({full_wall * per:.0f} µs wall)"
    )
    print(
        f"  SQLite alone, replayed:       {sql_cpu * per:7.0f} µs CPU per incident"
        f" ({sql_wall * per:.0f} µs wall)"
    )
    print(
        f"  SQLite's ceiling on one core: {n / sql_cpu:7,.0f} incidents/s (CPU), {n / sql_wall:,.0f}/s (wall)"
    )


if __name__ == "__main__":
    asyncio.run(main())
