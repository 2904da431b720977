"""The group-commit writer's linger (ONCALL_WRITE_LINGER_MS): while requests queue up, the next
commit waits for more of them instead of starting at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from oncall_server.ingest.model import IngestResult, NormalizedEvent, PreparedAlert
from oncall_server.runtime.app import App
from oncall_server.severity import Severity
from oncall_server.testing import Tenant, bootstrap, server_settings


def alert(tenant: Tenant, app: App, key: str) -> PreparedAlert:
    return PreparedAlert(
        tenant.tenant_id,
        tenant.service_id,
        tenant.integration_id,
        0,
        NormalizedEvent(title=f"disk full {key}", severity=Severity.HIGH, dedup_key=key),
        app.clock.now(),
    )


@pytest.mark.parametrize(("linger_ms", "commits"), [(0, 3), (1000, 2)])
async def test_a_busy_writer_with_a_linger_gathers_later_requests_into_one_commit(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, linger_ms: int, commits: int
) -> None:
    app = await App.open(server_settings(tmp_path, database_url, redis_url, write_linger_ms=linger_ms))
    try:
        tenant = await bootstrap(app)
        await app.writer.submit([alert(tenant, app, "warm-up")])
        before = app.writer.batches_committed
        calls: list[asyncio.Task[list[IngestResult]]] = [
            asyncio.create_task(app.writer.submit([alert(tenant, app, "first")]))
        ]
        while not app.writer.next_commit.accepting:  # noqa: ASYNC110 - until the first request's batch is running
            await asyncio.sleep(0)
        calls.append(asyncio.create_task(app.writer.submit([alert(tenant, app, "queued")])))
        while app.writer.batches_committed == before:  # noqa: ASYNC110 - until the first batch committed
            await asyncio.sleep(0)
        # Without a linger the writer has already taken "queued" by now; with one it is waiting.
        calls.append(asyncio.create_task(app.writer.submit([alert(tenant, app, "later")])))
        results = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert [r[0].outcome.name for r in results] == ["CREATED"] * 3
        assert app.writer.batches_committed - before == commits
    finally:
        await app.close()
