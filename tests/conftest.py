"""Fixtures: real Redis, real SQLite and PostgreSQL, real servers on loopback.

The shared ones (``redis_url``, ``redis``, ``backend_urls``, ``database_url``, ``clock``,
``server``, ``clocked_server``, ``capture_channel``, ``settle``) come from On-Call's pytest plugin,
``oncall_server/pytest_plugin.py``, the same fixtures plugin authors get. Every database test runs
on SQLite, and on PostgreSQL too when ``ONCALL_TEST_DATABASE_URL`` is set (``.ci/run`` sets it).
Redis is ``ONCALL_TEST_REDIS_URL`` when set, else an embedded redis-server for the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from oncall_server.testing import CaptureChannel, RunningServer
from tests.helpers import WebhookReceiver


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = await WebhookReceiver().start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
def paging(
    paging_server: tuple[RunningServer, CaptureChannel],
) -> tuple[RunningServer, CaptureChannel]:
    """The plugin's ``paging_server``: a server whose scheduler and dispatcher the test drives."""
    return paging_server
