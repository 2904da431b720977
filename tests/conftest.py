"""Fixtures: real Redis, real SQLite and PostgreSQL, real servers on loopback.

Every database test runs on SQLite, and on PostgreSQL too when
``ONCALL_TEST_DATABASE_URL`` is set (``.ci/run`` sets it). Redis is
``ONCALL_TEST_REDIS_URL`` when set, else an embedded redis-server for the
session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from oncall_server import redis_client
from oncall_server.clock import FakeClock
from oncall_server.redis_embedded import EmbeddedRedis
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine
from oncall_server.testing import (
    RunningServer,
    create_scratch_postgres,
    drop_scratch_postgres,
    empty_all_tables,
    running_server,
    server_settings,
)
from tests.helpers import WebhookReceiver

PG_ADMIN_URL = os.environ.get("ONCALL_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", *(["postgresql"] if PG_ADMIN_URL else [])]


@pytest.fixture(scope="session")
async def redis_url() -> AsyncIterator[str]:
    external = os.environ.get("ONCALL_TEST_REDIS_URL")
    if external:
        yield external
        return
    # Short path: unix socket paths are limited to ~107 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-redis-", dir="/tmp"))
    embedded = EmbeddedRedis(data_dir)
    yield await embedded.start()
    await embedded.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_client.connect(redis_url)  # the server's client, so tests speak as it does
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def backend_urls(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
    """One migrated database per backend for the whole session; tests empty them instead of recreating."""
    urls = {"sqlite": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'oncall.db'}"}
    if PG_ADMIN_URL:
        urls["postgresql"] = await create_scratch_postgres(PG_ADMIN_URL)
    for url in urls.values():
        engine = create_engine(url)
        await migrate.upgrade(engine)
        await engine.dispose()
    yield urls
    if PG_ADMIN_URL:
        await drop_scratch_postgres(PG_ADMIN_URL, urls["postgresql"])


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, backend_urls: dict[str, str]) -> str:
    """An empty, migrated database of each backend."""
    url = backend_urls[request.param]
    await empty_all_tables(url)
    return url


@pytest.fixture
async def server(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    async with running_server(server_settings(tmp_path, database_url, redis_url)) as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def clocked_server(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, clock: FakeClock
) -> AsyncIterator[RunningServer]:
    """A server whose time the test moves."""
    async with running_server(server_settings(tmp_path, database_url, redis_url), clock=clock) as running:
        yield running


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = await WebhookReceiver().start()
    try:
        yield receiver
    finally:
        await receiver.stop()
