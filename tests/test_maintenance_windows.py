"""Maintenance windows apply to the next alert once the API call returns, in every server process,
although each ingest writer keeps its own copy of them (oncall_server/ingest/windows.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy import delete, insert

from oncall_server.api.v1 import catalog_service_pb2, catalog_service_pb2_grpc
from oncall_server.clock import FakeClock
from oncall_server.ids import uuid7
from oncall_server.ingest.coordination import windows_key
from oncall_server.storage.models import MaintenanceWindow
from oncall_server.testing import RunningServer, Tenant, bootstrap, running_server, server_settings
from tests.helpers import create_window as create_stored_window
from tests.helpers import post_json


async def create_window(server: RunningServer, tenant: Tenant, start: datetime) -> str:
    return str((await create_stored_window(server, tenant, start)).id)


async def outcome(server: RunningServer, tenant: Tenant, dedup_key: str) -> str:
    status, answer = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
        {"title": "reboot", "dedup_key": dedup_key},
    )
    assert status == 202, answer
    return str(answer["outcome"])


async def delete_window(server: RunningServer, tenant: Tenant, window_id: str) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        await catalog_service_pb2_grpc.CatalogServiceStub(channel).DeleteMaintenanceWindow(
            catalog_service_pb2.DeleteMaintenanceWindowRequest(maintenance_window_id=window_id),
            metadata=tenant.auth,
        )


@pytest.fixture
async def two_servers(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, clock: FakeClock
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two server processes' worth of roles on one database and one Redis (replicas)."""
    async with (
        running_server(server_settings(tmp_path / "a", database_url, redis_url), clock=clock) as a,
        running_server(server_settings(tmp_path / "b", database_url, redis_url), clock=clock) as b,
    ):
        yield a, b


async def test_a_window_change_in_one_process_applies_to_the_next_alert_in_another(
    two_servers: tuple[RunningServer, RunningServer], clock: FakeClock
) -> None:
    ingesting, configuring = two_servers
    tenant = await bootstrap(ingesting.app)
    assert await outcome(ingesting, tenant, "host-1") == "created"  # its writer now holds "no windows"
    window_id = await create_window(configuring, tenant, clock.now() - timedelta(minutes=1))
    assert await outcome(ingesting, tenant, "host-2") == "suppressed"
    await delete_window(configuring, tenant, window_id)
    assert await outcome(ingesting, tenant, "host-3") == "created"


async def test_a_copy_redis_can_no_longer_vouch_for_is_read_again(
    clocked_server: RunningServer, clock: FakeClock, redis: Redis
) -> None:
    """The window goes from SQL without the API (so nothing replaces its token) and Redis loses the
    token: the writer must not keep trusting the copy it holds."""
    server = clocked_server
    tenant = await bootstrap(server.app)
    await create_window(server, tenant, clock.now() - timedelta(minutes=1))
    assert await outcome(server, tenant, "host-1") == "suppressed"
    async with server.app.engine.begin() as conn:
        await conn.execute(delete(MaintenanceWindow))
    await redis.delete(windows_key(tenant.service_id))
    assert await outcome(server, tenant, "host-2") == "created"
    await redis.flushdb()  # everything gone at once: the service's state is reloaded as well
    assert await outcome(server, tenant, "host-3") == "created"


async def test_a_change_redis_never_heard_of_is_seen_once_the_copy_is_old(
    clocked_server: RunningServer, clock: FakeClock
) -> None:
    """A process that died between committing a window and replacing its token: the others read
    their copy again after ``max_age`` (here 0 s instead of 60) and see the window."""
    server = clocked_server
    tenant = await bootstrap(server.app)
    assert await outcome(server, tenant, "host-1") == "created"
    server.app.writer.windows.max_age = 0.0
    now = clock.now()
    async with server.app.engine.begin() as conn:
        await conn.execute(
            insert(MaintenanceWindow).values(
                id=uuid7(),
                tenant_id=tenant.tenant_id,
                service_id=tenant.service_id,
                start_at=now - timedelta(minutes=1),
                end_at=now + timedelta(hours=1),
                reason="patching",
                created_at=now,
            )
        )
    assert await outcome(server, tenant, "host-2") == "suppressed"


async def test_after_redis_is_lost_a_batch_of_suppressed_alerts_restores_grouping(
    clocked_server: RunningServer, clock: FakeClock, redis: Redis
) -> None:
    """A service whose alerts of a batch are all suppressed is still checked with Redis, and when
    its state is gone its open grouping window is reloaded from SQL, not forgotten."""
    server = clocked_server
    tenant = await bootstrap(server.app, alert_grouping="time", alert_grouping_timeout_minutes=30)
    assert await outcome(server, tenant, "host-1") == "created"
    window_id = await create_window(server, tenant, clock.now() - timedelta(minutes=1))
    assert await outcome(server, tenant, "host-2") == "suppressed"  # the writer's copy has the window
    await redis.flushdb()
    assert await outcome(server, tenant, "host-3") == "suppressed"  # nothing left to decide: a reload
    await delete_window(server, tenant, window_id)
    assert await outcome(server, tenant, "host-4") == "grouped"
