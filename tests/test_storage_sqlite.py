"""The SQLite storage layer's own promises: what is on disk, and errors that still name the problem.

The engine uses a one-trip-per-statement aiosqlite adapter and formats timestamps itself; both
must keep the rows and errors exactly as SQLAlchemy's stock adapter would, or databases written
by earlier builds would compare wrongly and conflicts would stop being retried.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server.storage import bulk, migrate
from oncall_server.storage.engine import SQLITE_IMMEDIATE, create_engine
from oncall_server.storage.models import Tenant


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'oncall.db'}")
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


async def test_timestamps_are_stored_as_utc_text_in_sqlalchemys_format(engine: AsyncEngine) -> None:
    paris_summer = timezone(timedelta(hours=2))
    created = datetime(2026, 3, 29, 3, 30, 0, 5, tzinfo=paris_summer)
    async with engine.begin() as conn:
        await conn.execute(insert(Tenant), [{"id": "t1", "name": "Acme", "created_at": created}])
        stored = (await conn.execute(text("SELECT created_at FROM tenants"))).scalar_one()
        loaded = (await conn.execute(select(Tenant.created_at))).scalar_one()
        # A comparison bound by the same type finds the row: the text sorts and matches as before.
        found = (
            await conn.execute(select(Tenant.id).where(Tenant.created_at == created.astimezone(UTC)))
        ).scalar_one_or_none()
    assert stored == "2026-03-29 01:30:00.000005"
    assert loaded == created and loaded.tzinfo is UTC
    assert found == "t1"


async def test_naive_timestamps_are_refused(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        with pytest.raises(Exception, match="naive datetime"):
            await conn.execute(
                insert(Tenant), [{"id": "t1", "name": "Acme", "created_at": datetime(2026, 1, 1)}]
            )


async def test_constraint_violations_surface_as_integrity_errors_and_roll_back(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(insert(Tenant), [{"id": "t1", "name": "Acme", "created_at": now}])
    with pytest.raises(IntegrityError, match="UNIQUE"):
        async with engine.begin() as conn:
            await conn.execute(
                insert(Tenant),
                [
                    {"id": "t2", "name": "Globex", "created_at": now},
                    {"id": "t3", "name": "Acme", "created_at": now},
                ],
            )
    async with engine.connect() as conn:
        names = (await conn.execute(select(Tenant.name).order_by(Tenant.name))).scalars().all()
    assert names == ["Acme"]


async def test_returning_rows_of_a_multi_row_insert_come_back_in_full(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    rows = [{"id": f"t{i:03}", "name": f"tenant {i}", "created_at": now} for i in range(250)]
    async with engine.begin() as conn:
        result = await conn.execute(insert(Tenant).returning(Tenant.id), rows)
        returned = sorted(result.scalars().all())
        count = (await conn.execute(text("SELECT count(*) FROM tenants"))).scalar_one()
    assert returned == [r["id"] for r in rows]
    assert count == 250


async def test_a_transactions_begin_rides_with_its_first_statement(engine: AsyncEngine) -> None:
    """BEGIN is deferred to the first statement's trip: the transaction must still start there.

    A write transaction (BEGIN IMMEDIATE) holds SQLite's write lock from its first statement,
    even a read, so another writer cannot slip in between its read and its write; everything
    after BEGIN is undone by a rollback; and a transaction without statements costs nothing
    and leaves the connection usable.
    """
    now = datetime.now(UTC)
    database = engine.url.database
    assert database is not None
    async with engine.begin() as conn:
        pass  # nothing to begin or commit
    async with engine.connect() as conn:
        immediate = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
        async with immediate.begin():
            await immediate.execute(select(Tenant.id))  # a read first
            other = sqlite3.connect(database, timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("INSERT INTO tenants (id, name, created_at) VALUES ('x', 'x', 'x')")
            finally:
                other.close()
            await immediate.execute(insert(Tenant), [{"id": "t1", "name": "Acme", "created_at": now}])
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with engine.begin() as conn:
            await conn.execute(insert(Tenant), [{"id": "t2", "name": "Globex", "created_at": now}])
            await conn.execute(insert(Tenant), [{"id": "t3", "name": "Initech", "created_at": now}])
            raise RuntimeError("changed my mind")
    async with engine.connect() as conn:
        assert (await conn.execute(select(Tenant.id))).scalars().all() == ["t1"]


async def test_bulk_writes_ride_with_the_next_trip_keeping_transactions_whole(engine: AsyncEngine) -> None:
    """``bulk.execute_all`` defers its writes to the transaction's next trip on SQLite.

    The transaction must still read its own writes, in order; nothing may be visible to another
    connection before the commit; a rollback must drop them; and a write that fails at the
    commit must fail the transaction loudly, naming the statement, with nothing stored.
    """
    now = datetime.now(UTC)
    database = engine.url.database
    assert database is not None
    tenants = [{"id": f"t{n}", "name": name, "created_at": now} for n, name in ((1, "Acme"), (2, "Globex"))]

    def committed_names() -> list[str]:
        other = sqlite3.connect(database)
        try:
            return [name for (name,) in other.execute("SELECT name FROM tenants ORDER BY name")]
        finally:
            other.close()

    async with engine.begin() as conn:
        await bulk.insert_rows(conn, Tenant, tenants)
        renamed = update(Tenant).where(Tenant.id == bindparam("b_id")).values(name=bindparam("b_name"))
        await bulk.executemany(conn, renamed, [{"b_id": "t2", "b_name": "Initech"}])  # runs after the insert
        seen = (await conn.execute(select(Tenant.name).order_by(Tenant.name))).scalars().all()
        assert seen == ["Acme", "Initech"]
        assert committed_names() == []  # they ran, inside the transaction: nothing visible yet
    assert committed_names() == ["Acme", "Initech"]

    with pytest.raises(RuntimeError, match="changed my mind"):
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, Tenant, [{"id": "t3", "name": "Umbrella", "created_at": now}])
            raise RuntimeError("changed my mind")
    with pytest.raises(IntegrityError, match="UNIQUE") as failed:
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, Tenant, [{"id": "t4", "name": "Hooli", "created_at": now}])
            await bulk.insert_rows(conn, Tenant, [{"id": "t1", "name": "Acme again", "created_at": now}])
    assert any("INSERT INTO tenants" in note for note in getattr(failed.value.orig, "__notes__", []))
    assert committed_names() == ["Acme", "Initech"]
    async with engine.begin() as conn:  # the connection went back to the pool clean
        await bulk.insert_rows(conn, Tenant, [{"id": "t5", "name": "Vandelay", "created_at": now}])
    assert committed_names() == ["Acme", "Initech", "Vandelay"]
