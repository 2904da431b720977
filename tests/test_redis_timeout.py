"""A Redis that stops answering fails ingest calls (retry later) instead of holding them."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import select

from oncall_server.storage.models import Alert
from oncall_server.testing import bootstrap, running_server, server_settings
from tests.helpers import post_json

PAUSE_MS = 4000


async def test_ingest_answers_unavailable_while_redis_is_paused_and_succeeds_after(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    settings = server_settings(tmp_path, database_url, redis_url, redis_timeout_seconds=0.5)
    async with running_server(settings) as server:
        tenant = await bootstrap(server.app)
        url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
        assert (await post_json(url, {"title": "warm-up", "dedup_key": "warm"}))[0] == 202
        # Redis holds every client's commands (connections stay open): without a timeout the call
        # below would wait out the pause and then succeed.
        await redis.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
        try:
            status, body = await post_json(url, {"title": "disk full", "dedup_key": "disk-1"})
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
        assert status == 503, body
        assert body["error"] == "Unavailable" and "retry" in body["message"], body

        status, body = await post_json(url, {"title": "disk full", "dedup_key": "disk-1"})
        assert status == 202, body
        assert body["outcome"] == "created"
        async with server.app.sessions() as session:
            stored = (await session.scalars(select(Alert.dedup_key).order_by(Alert.dedup_key))).all()
        assert stored == ["disk-1", "warm"]
