"""pytest fixtures for testing On-Call and its plugins against a real server.

Loaded by pytest through the ``pytest11`` entry point ``oncall`` wherever ``oncall-server`` is
installed (``-p no:oncall`` turns it off); a fixture of the same name in a ``conftest.py`` wins.
Every database fixture runs on SQLite, and on PostgreSQL too when ``ONCALL_TEST_DATABASE_URL``
names an admin URL; Redis is ``ONCALL_TEST_REDIS_URL`` when set, else an embedded redis-server
for the session. The fixtures are async: they need pytest-asyncio (``asyncio_mode = "auto"``, or
the ``asyncio`` mark on each test).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from oncall_server.clock import FakeClock
    from oncall_server.runtime.app import App
    from oncall_server.testing import CaptureChannel, RunningServer


#: Where the ``clock`` fixture starts.
CLOCK_START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def backends() -> list[str]:
    """The databases each database test runs on."""
    return ["sqlite", *(["postgresql"] if os.environ.get("ONCALL_TEST_DATABASE_URL") else [])]


@pytest.fixture
def clock() -> FakeClock:
    """The injected clock of ``clocked_server``: advance it instead of sleeping."""
    from oncall_server.clock import FakeClock

    return FakeClock(CLOCK_START)


@pytest.fixture
def capture_channel() -> CaptureChannel:
    """A :class:`~oncall_server.testing.CaptureChannel` (named ``capture``); register it on a
    server with ``app.plugins.register(CapturePlugin(capture_channel), "capture")``."""
    from oncall_server.testing import CaptureChannel

    return CaptureChannel()


@pytest.fixture
def settle() -> Callable[[App], Awaitable[None]]:
    """:func:`oncall_server.testing.settle`: ``await settle(app)`` runs due escalation steps and
    sends until none is left at the clock's now."""
    from oncall_server import testing

    return testing.settle


if find_spec("pytest_asyncio") is not None:  # without it, there are no async fixtures to offer
    import pytest_asyncio

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def redis_url() -> AsyncIterator[str]:
        """``ONCALL_TEST_REDIS_URL``, or an embedded redis-server for the session."""
        from oncall_server.redis_embedded import EmbeddedRedis

        external = os.environ.get("ONCALL_TEST_REDIS_URL")
        if external:
            yield external
            return
        # Short path: unix socket paths are limited to ~107 bytes.
        data_dir = Path(tempfile.mkdtemp(prefix="oncall-redis-", dir="/tmp"))
        embedded = EmbeddedRedis(data_dir)
        yield await embedded.start()
        await embedded.stop()

    @pytest_asyncio.fixture
    async def redis(redis_url: str) -> AsyncIterator[Redis]:
        """A client of ``redis_url`` (the server's kind of client), its database emptied first."""
        from oncall_server import redis_client

        client = redis_client.connect(redis_url)
        await client.flushdb()
        yield client
        await client.aclose()

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def backend_urls(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
        """One migrated database per backend for the whole session; tests empty them instead of
        recreating them."""
        from oncall_server.runtime.settings import Settings
        from oncall_server.storage import migrate
        from oncall_server.storage.engine import create_engine
        from oncall_server.testing import create_scratch_postgres, drop_scratch_postgres

        admin_url = os.environ.get("ONCALL_TEST_DATABASE_URL", "")
        urls = {"sqlite": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'oncall.db'}"}
        if admin_url:
            urls["postgresql"] = await create_scratch_postgres(admin_url)
        for url in urls.values():
            engine = create_engine(url, sqlite_driver=Settings().sqlite_driver)
            await migrate.upgrade(engine)
            await engine.dispose()
        yield urls
        if admin_url:
            await drop_scratch_postgres(admin_url, urls["postgresql"])

    @pytest_asyncio.fixture(params=backends())
    async def database_url(request: pytest.FixtureRequest, backend_urls: dict[str, str]) -> str:
        """An empty, migrated database of each backend (the test runs once per backend)."""
        from oncall_server.testing import empty_all_tables

        url = backend_urls[request.param]
        await empty_all_tables(url)
        return url

    @pytest_asyncio.fixture
    async def server(
        tmp_path: Path, database_url: str, redis_url: str, redis: Redis
    ) -> AsyncIterator[RunningServer]:
        """A started server with every role on free loopback ports, on the real clock."""
        from oncall_server.testing import running_server, server_settings

        async with running_server(server_settings(tmp_path, database_url, redis_url)) as running:
            yield running

    @pytest_asyncio.fixture
    async def clocked_server(
        tmp_path: Path, database_url: str, redis_url: str, redis: Redis, clock: FakeClock
    ) -> AsyncIterator[RunningServer]:
        """A started server whose time is ``clock``: the test moves it."""
        from oncall_server.testing import running_server, server_settings

        settings = server_settings(tmp_path, database_url, redis_url)
        async with running_server(settings, clock=clock) as running:
            yield running

    @pytest_asyncio.fixture
    async def paging_server(
        tmp_path: Path,
        database_url: str,
        redis_url: str,
        redis: Redis,
        clock: FakeClock,
        capture_channel: CaptureChannel,
    ) -> AsyncIterator[tuple[RunningServer, CaptureChannel]]:
        """A server on ``clock`` without its scheduler and dispatcher loops (the test runs them with
        ``settle``), its pages going to ``capture_channel`` (contact methods of type ``capture``)."""
        from oncall_server.testing import CapturePlugin, running_server, server_settings

        settings = server_settings(tmp_path, database_url, redis_url, roles=("grpc", "gateway"))
        async with running_server(settings, clock=clock) as running:
            running.app.plugins.register(CapturePlugin(capture_channel), "capture-test")
            await running.app.escalator.rebuild()
            yield running, capture_channel
