"""Idempotency keys on ingest: no stored value blocks later alerts.

A keyless alert stored suppressed (maintenance) or recorded ignored its key, so its retry hit the
unique constraint: 503 for that retry forever, and the batch beside it failed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp

from oncall_server.testing import RunningServer, Tenant, bootstrap
from tests.helpers import count_rows, create_window


def webhook_url(server: RunningServer, tenant: Tenant) -> str:
    return f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"


async def post(
    http: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.post(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    ) as r:
        return r.status, await r.json(content_type=None)


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
            await post(
                http, webhook_url(server, tenant), b'{"title": "patching"}', {"Idempotency-Key": "m-1"}
            )
            for _ in range(2)
        ]
    assert [s for s, _ in answers] == [202, 202], answers
    assert answers[1][1]["alert_id"] == answers[0][1]["alert_id"]
    assert answers[0][1]["outcome"] == "suppressed"
    assert await count_rows(app) == (1, 0)
