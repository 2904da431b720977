"""Idempotency keys on ingest: an empty one is no key, and no stored value blocks later alerts.

An empty ``Idempotency-Key`` used to be stored as ``""`` and then skipped by the "already seen"
check, so the next empty-keyed alert of the source hit the unique constraint: 503 for every later
alert. A keyless alert stored suppressed (maintenance) or recorded ignored its key, so its retry
hit the same constraint.
"""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest

from oncall_server.testing import RunningServer, bootstrap
from tests.helpers import alerts_of, count_rows, create_window, post_body, webhook_url


@pytest.mark.parametrize("header", ["", "   "])
async def test_an_empty_idempotency_key_is_no_key_and_never_blocks_later_alerts(
    server: RunningServer, header: str
) -> None:
    tenant = await bootstrap(server.app)
    async with aiohttp.ClientSession() as http:
        answers = [
            await post_body(
                http, webhook_url(server, tenant), b'{"title": "no key 1"}', {"Idempotency-Key": header}
            ),
            await post_body(
                http, webhook_url(server, tenant), b'{"title": "no key 2"}', {"Idempotency-Key": header}
            ),
            await post_body(http, webhook_url(server, tenant), b'{"title": "plain"}'),
            await post_body(
                http, webhook_url(server, tenant), b'{"title": "keyed"}', {"Idempotency-Key": "k-1"}
            ),
            await post_body(
                http, webhook_url(server, tenant), b'{"title": "keyed"}', {"Idempotency-Key": "k-1"}
            ),
        ]
    assert [s for s, _ in answers] == [202] * 5, answers
    assert [b["outcome"] for _, b in answers] == ["created"] * 4 + ["deduplicated"]
    assert answers[4][1]["alert_id"] == answers[3][1]["alert_id"]
    stored = await alerts_of(server.app, tenant.service_id)
    assert sorted(a.title for a in stored) == ["keyed", "no key 1", "no key 2", "plain"]
    assert sorted(a.idempotency_key or "-" for a in stored) == ["-", "-", "-", "k-1"]


async def test_a_retried_suppressed_alert_with_an_idempotency_key_is_stored_once(
    server: RunningServer,
) -> None:
    """During maintenance a keyless alert is stored suppressed; its retry (same key) must not hit
    the unique constraint (503 forever, and the batch beside it failed)."""
    app = server.app
    tenant = await bootstrap(app)
    await create_window(server, tenant, app.clock.now() - timedelta(minutes=1))
    async with aiohttp.ClientSession() as http:
        answers = [
            await post_body(
                http, webhook_url(server, tenant), b'{"title": "patching"}', {"Idempotency-Key": "m-1"}
            )
            for _ in range(2)
        ]
    assert [s for s, _ in answers] == [202, 202], answers
    assert answers[1][1]["alert_id"] == answers[0][1]["alert_id"]
    assert answers[0][1]["outcome"] == "suppressed"
    assert await count_rows(app) == (1, 0)
