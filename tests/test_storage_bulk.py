"""storage.bulk: the hot executemany path must store exactly what ``conn.execute`` would.

It skips SQLAlchemy's per-row parameter building, so these tests write the same rows both ways
on each database and compare what is read back — timestamps in other zones, JSON with
non-ASCII text and integers beyond 64 bits, constants of the statement itself — and check that
rows it cannot bind are refused before anything is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Table, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server.storage import bulk, dialects
from oncall_server.storage.engine import create_engine
from oncall_server.storage.models import (
    EscalationPolicy,
    Incident,
    MaintenanceWindow,
    Service,
    Tenant,
    TimelineEntry,
)

_incidents = cast(Table, Incident.__table__)
_ESCALATE = (
    update(_incidents)
    .where(_incidents.c.id == bindparam("b_id"), _incidents.c.status == "triggered")
    .values(escalation_step=bindparam("b_step"), escalation_snapshot=bindparam("b_snapshot"), assigned_to="")
)
T0 = datetime(2026, 3, 29, 3, 30, 0, 5, tzinfo=timezone(timedelta(hours=2)))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(insert(Tenant), [{"id": "t1", "name": "Acme", "created_at": T0}])
        await conn.execute(
            insert(Service),
            [{"id": "s1", "tenant_id": "t1", "name": "svc", "created_at": T0, "updated_at": T0}],
        )
    yield engine
    await engine.dispose()


def _entry(entry_id: str, incident_id: str, details: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {
        "id": entry_id,
        "tenant_id": "t1",
        "incident_id": incident_id,
        "kind": "note",
        "actor": "Zoë",
        "message": "Disque plein « srv-01 »",
        "details": details,
        "created_at": at,
    }


def _incident(incident_id: str) -> dict[str, Any]:
    return {
        "id": incident_id,
        "tenant_id": "t1",
        "service_id": "s1",
        "title": "disk",
        "severity": 2,
        "status": "triggered",
        "created_at": T0,
        "updated_at": T0,
        "last_alert_at": T0,
        "assigned_to": "someone",
    }


async def test_inserted_rows_read_back_as_with_sqlalchemys_executemany(engine: AsyncEngine) -> None:
    other_zone = T0.astimezone(timezone(timedelta(hours=-7)))
    details = [{"n": str(2**70), "big": 2**70}, {"text": "é ü 漢"}, {}]
    async with engine.begin() as conn:
        await conn.execute(insert(Incident), [_incident("i-core"), _incident("i-bulk")])
        await conn.execute(
            insert(TimelineEntry),
            [
                _entry(f"core-{n}", "i-core", d, at)
                for n, (d, at) in enumerate(zip(details, [T0, other_zone, T0], strict=True))
            ],
        )
        await bulk.insert_rows(
            conn,
            TimelineEntry,
            [
                _entry(f"bulk-{n}", "i-bulk", d, at)
                for n, (d, at) in enumerate(zip(details, [T0, other_zone, T0], strict=True))
            ],
        )
    async with engine.connect() as conn:
        rows = (await conn.execute(select(TimelineEntry).order_by(TimelineEntry.id))).all()
    by_source = {
        source: [(r.details, r.created_at, r.message, r.actor) for r in rows if r.id.startswith(source)]
        for source in ("core", "bulk")
    }
    assert by_source["bulk"] == by_source["core"]
    assert by_source["bulk"][0][0]["big"] == 2**70
    assert by_source["bulk"][1][1] == T0  # same instant, stored as UTC
    # A timestamp bound by SQLAlchemy finds the bulk rows: same text format on SQLite.
    async with engine.connect() as conn:
        found = (
            (
                await conn.execute(
                    select(TimelineEntry.id).where(TimelineEntry.created_at == T0).order_by(TimelineEntry.id)
                )
            )
            .scalars()
            .all()
        )
    assert found == ["bulk-0", "bulk-1", "bulk-2", "core-0", "core-1", "core-2"]


async def test_statement_constants_apply_and_each_row_gets_its_values(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(Incident), [_incident("i1"), _incident("i2"), {**_incident("i3"), "status": "resolved"}]
        )
        await bulk.executemany(
            conn,
            _ESCALATE,
            [{"b_id": f"i{n}", "b_step": n, "b_snapshot": {"tiers": [n]}} for n in (1, 2, 3)],
        )
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Incident).order_by(Incident.id))).all()
    got = {r.id: (r.escalation_step, r.escalation_snapshot, r.assigned_to) for r in rows}
    assert got["i1"] == (1, {"tiers": [1]}, "")
    assert got["i2"] == (2, {"tiers": [2]}, "")
    assert got["i3"] == (0, None, "someone")  # the WHERE constant (status) kept the resolved one out


async def test_rows_it_cannot_bind_are_refused_before_anything_is_written(engine: AsyncEngine) -> None:
    entry = _entry("e1", "i1", {}, T0)
    async with engine.begin() as conn:
        await conn.execute(insert(Incident), [_incident("i1")])
    with pytest.raises(KeyError, match="actor"):
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, TimelineEntry, [{k: v for k, v in entry.items() if k != "actor"}])
    with pytest.raises(ValueError, match="differ in their keys"):
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, TimelineEntry, [entry, {**entry, "id": "e2", "extra": 1}])
    async with engine.connect() as conn:
        assert (await conn.execute(select(TimelineEntry.id))).all() == []


async def test_several_statements_run_in_order_and_fail_together(engine: AsyncEngine) -> None:
    """execute_all sends its statements together (one trip on SQLite): order and errors must hold."""
    async with engine.begin() as conn:
        await bulk.execute_all(
            conn,
            [
                (bulk.insert_into(Incident), [{**_incident(f"i{n}"), **_defaults()} for n in (1, 2)]),
                (_ESCALATE, [{"b_id": "i2", "b_step": 7, "b_snapshot": {"tiers": []}}]),  # sees the insert
                (_ESCALATE, []),  # nothing to run
            ],
        )
    entry = _entry("e1", "i1", {}, T0)
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await bulk.execute_all(
                conn,
                [
                    (bulk.insert_into(TimelineEntry), [entry]),
                    (bulk.insert_into(TimelineEntry), [{**entry, "message": "same id again"}]),
                ],
            )
    async with engine.connect() as conn:
        steps = {
            row.id: row.escalation_step
            for row in await conn.execute(select(Incident.id, Incident.escalation_step))
        }
        entries = (await conn.execute(select(TimelineEntry.id))).all()
    assert steps == {"i1": 0, "i2": 7}
    assert entries == []  # the first insert went back with the second


def _defaults() -> dict[str, Any]:
    """The columns with Python-side defaults that a bulk insert must be given."""
    return {
        "source": "",
        "source_ref": "",
        "dedup_key": None,
        "description": "",
        "details": {},
        "alert_count": 1,
        "acknowledged_at": None,
        "acknowledged_by": "",
        "resolved_at": None,
        "resolved_by": "",
        "resolution_summary": "",
        "escalation_snapshot": None,
        "escalation_run": 1,
        "escalation_step": 0,
        "escalation_due_at": None,
    }


def _upsert_incident(dialect: str) -> Any:
    """The shape of the ingest writer's incident upsert: merge counts unless resolved, return them."""
    statement = dialects.named(dialect).insert(Incident)
    return statement.on_conflict_do_update(
        index_elements=[Incident.id],
        set_={"alert_count": Incident.alert_count + statement.excluded.alert_count},
        where=Incident.status != "resolved",
    ).returning(Incident.id, Incident.alert_count)


async def test_upserts_return_what_they_inserted_or_merged_and_fail_as_sqlalchemy_would(
    engine: AsyncEngine,
) -> None:
    """``execute_returning`` (one trip, past SQLAlchemy, on SQLite) answers as ``conn.execute`` does."""
    upsert = _upsert_incident(engine.dialect.name)
    rows = [{**_incident(f"i{n}"), **_defaults(), "alert_count": n} for n in (1, 2, 3)]
    async with engine.begin() as conn:
        await conn.execute(insert(Incident), [{**_incident("i2"), "alert_count": 10}])
        await conn.execute(insert(Incident), [{**_incident("i3"), "status": "resolved"}])
        returned = await bulk.execute_returning(conn, upsert, rows)
    # New: inserted with its own count; open: merged; resolved: left alone, nothing returned.
    assert sorted(returned) == [("i1", 1), ("i2", 12)]
    async with engine.connect() as conn:
        counts = dict((await conn.execute(select(Incident.id, Incident.alert_count))).all())
    assert counts == {"i1": 1, "i2": 12, "i3": 1}

    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await bulk.execute_returning(
                conn, upsert, [{**rows[0], "id": "i9", "tenant_id": "no-such-tenant"}]
            )
    with pytest.raises(TypeError, match="cannot run"):  # a timestamp would come back unconverted
        async with engine.begin() as conn:
            await bulk.execute_returning(conn, upsert.returning(Incident.created_at), rows)
    async with engine.connect() as conn:
        after = dict((await conn.execute(select(Incident.id, Incident.alert_count))).all())
    assert after == counts


_POLICY_OF_SERVICE = bulk.KeyedSelect(
    select(Service.id, Service.name, EscalationPolicy.tiers, MaintenanceWindow.end_at)
    .outerjoin(EscalationPolicy, EscalationPolicy.id == Service.escalation_policy_id)
    .outerjoin(
        MaintenanceWindow,
        and_(MaintenanceWindow.service_id == Service.id, MaintenanceWindow.end_at > bindparam("after")),
    ),
    Service.id,
    "service_id",
)


async def test_keyed_selects_read_back_as_sqlalchemy_reads_them(engine: AsyncEngine) -> None:
    """``fetch_by_keys`` (per key in one trip past SQLAlchemy on SQLite) returns what ``IN`` does:
    JSON decoded, timestamps as aware UTC datetimes, NULLs of outer joins, each row once."""
    tiers = [{"delay_seconds": 300, "targets": [{"type": "user", "id": "Zoë"}]}]
    async with engine.begin() as conn:
        await conn.execute(
            insert(EscalationPolicy),
            [
                {
                    "id": "p1",
                    "tenant_id": "t1",
                    "name": "night",
                    "tiers": tiers,
                    "created_at": T0,
                    "updated_at": T0,
                }
            ],
        )
        await conn.execute(
            insert(Service),
            [
                {"id": f"s{n}", "tenant_id": "t1", "name": f"svc {n}", "created_at": T0, "updated_at": T0}
                for n in (2, 3)
            ],
        )
        await conn.execute(update(Service).where(Service.id == "s2").values(escalation_policy_id="p1"))
        await conn.execute(
            insert(MaintenanceWindow),
            [
                {
                    "id": f"w{n}",
                    "tenant_id": "t1",
                    "service_id": "s2",
                    "start_at": T0,
                    "end_at": T0 + timedelta(hours=n),
                    "created_at": T0,
                }
                for n in (1, 2)
            ],
        )
        keys = ["s2", "s3", "s2", "missing"]
        fetched = await bulk.fetch_by_keys(conn, _POLICY_OF_SERVICE, keys, after=T0)
        expected = (await conn.execute(_POLICY_OF_SERVICE.by_keys, {"service_id": keys, "after": T0})).all()
    rows = sorted((r.id, r.name, r.tiers, r.end_at) for r in fetched)
    assert rows == sorted(tuple(r) for r in expected)
    assert rows == [
        ("s2", "svc 2", tiers, T0 + timedelta(hours=1)),
        ("s2", "svc 2", tiers, T0 + timedelta(hours=2)),
        ("s3", "svc 3", None, None),
    ]
    assert all(r.end_at is None or r.end_at.utcoffset() == timedelta(0) for r in fetched)
