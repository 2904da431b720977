"""Page outcomes are carried by the next ingest commit while ingest is busy
(oncall_server/ingest/carried_writes.py): every sent page is still recorded once, also when the
transaction that carried it failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from oncall_server.errors import Unavailable
from oncall_server.ingest.carried_writes import CarriedWrites
from oncall_server.ingest.model import NormalizedEvent, PreparedAlert
from oncall_server.runtime.app import App
from oncall_server.severity import Severity
from oncall_server.storage.models import Incident, Notification, TimelineEntry
from oncall_server.testing import Tenant, add_policy, add_user, bootstrap, server_settings


@pytest.fixture
async def paged(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[tuple[App, Tenant]]:
    """An app whose service pages a ``log`` user at once for every new incident, dispatcher on."""
    app = await App.open(server_settings(tmp_path, database_url, redis_url))
    try:
        tenant = await bootstrap(app)
        user_id = await add_user(app, tenant.tenant_id, "Alice")
        await add_policy(app, tenant.tenant_id, [(300, [("user", user_id)])], service_id=tenant.service_id)
        app.dispatcher.running = True  # tier-1 pages are written claimed and handed over, as in `serve`
        yield app, tenant
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app.dispatcher.drain(), 30)
        await app.close()


async def ingest_concurrently(app: App, tenant: Tenant, incidents: int, callers: int = 20) -> None:
    """Callers that each send one new-incident alert after another, so while a batch's pages are
    recorded the writer has the next batch coming."""
    now = app.clock.now()

    async def caller(first: int) -> None:
        for n in range(first, incidents, callers):
            alert = PreparedAlert(
                tenant.tenant_id,
                tenant.service_id,
                tenant.integration_id,
                0,
                NormalizedEvent(title=f"disk full {n}", severity=Severity.HIGH, dedup_key=f"k{n}"),
                now,
            )
            await app.writer.submit([alert])

    await asyncio.gather(*(caller(first) for first in range(callers)))
    await asyncio.wait_for(app.dispatcher.drain(), 30)  # lost carried writes would keep their sender waiting


async def recorded(app: App) -> tuple[int, list[str], int]:
    """(incidents, notification statuses, "Notified" timeline entries)."""
    async with app.engine.connect() as conn:
        incidents = await conn.scalar(select(func.count()).select_from(Incident))
        statuses = list((await conn.scalars(select(Notification.status))).all())
        notified = await conn.scalar(select(func.count()).where(TimelineEntry.message.startswith("Notified")))
    return int(incidents or 0), statuses, int(notified or 0)


async def test_outcomes_are_carried_by_ingest_commits_and_each_page_is_recorded_once(
    paged: tuple[App, Tenant],
) -> None:
    app, tenant = paged
    await ingest_concurrently(app, tenant, 400)
    assert app.writer.carried_commits > 0  # the outcomes were carried by ingest commits
    incidents, statuses, notified = await recorded(app)
    assert incidents == 400
    assert statuses == ["sent"] * 400
    assert notified == 400


@pytest.mark.parametrize("poison", ["duplicate timeline row", "row missing a column"])
async def test_carried_writes_whose_transaction_failed_are_recorded_alone_and_ingest_goes_on(
    paged: tuple[App, Tenant], poison: str
) -> None:
    """The carried writes hold a timeline row twice (a unique-key violation from the database at
    commit) or a row that lacks a column (refused before it reaches the database): each such
    transaction fails, ingest retries it without the carried writes, and the outcomes are written
    alone."""
    app, tenant = paged
    take_carried_writes = app.dispatcher.recorder.take_carried_writes
    poisoned: list[CarriedWrites] = []

    def take_poisoned_carried_writes() -> CarriedWrites | None:
        carried = take_carried_writes()
        if carried is None:
            return None
        insert_entries, entries = carried.writes[-1]
        bad = entries[:1]
        if poison == "row missing a column":
            bad = [{k: v for k, v in entries[0].items() if k != "message"}]
        poisoned.append(carried)
        return CarriedWrites([*carried.writes, (insert_entries, bad)], carried.settle)

    app.dispatcher.recorder.take_carried_writes = take_poisoned_carried_writes  # type: ignore[method-assign]
    await ingest_concurrently(app, tenant, 400)
    assert poisoned and app.writer.carried_commits == 0
    incidents, statuses, notified = await recorded(app)
    assert incidents == 400  # every caller's alerts committed
    assert statuses == ["sent"] * 400
    assert notified == 400


async def test_a_submit_once_the_writer_is_stopping_is_refused_not_left_waiting(
    paged: tuple[App, Tenant],
) -> None:
    app, tenant = paged
    alert = PreparedAlert(
        tenant.tenant_id,
        tenant.service_id,
        tenant.integration_id,
        0,
        NormalizedEvent(title="late", severity=Severity.HIGH, dedup_key="late"),
        app.clock.now(),
    )
    stopping = asyncio.create_task(app.writer.stop())
    await asyncio.sleep(0)  # the stop marker is queued
    with pytest.raises(Unavailable, match="not running"):
        await asyncio.wait_for(app.writer.submit([alert]), 5)
    await stopping
