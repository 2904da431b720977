"""Shutdown drains: every alert answered 202 while the server stops is in the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from redis.asyncio import Redis
from sqlalchemy import select

from oncall_server.storage.engine import create_engine
from oncall_server.storage.models import Alert
from oncall_server.testing import bootstrap, running_server, server_settings


async def test_stopping_under_load_loses_no_accepted_alert(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    accepted: list[str] = []
    refused = 0
    async with running_server(server_settings(tmp_path, database_url, redis_url)) as running:
        tenant = await bootstrap(running.app)
        url = f"{running.http_url}/api/webhooks/ingest?key={tenant.integration_key}"

        async def sender(http: aiohttp.ClientSession, n: int) -> None:
            nonlocal refused
            for i in range(50):
                try:
                    async with http.post(url, json={"title": "t", "dedup_key": f"{n}-{i}"}) as response:
                        if response.status == 202:
                            accepted.append((await response.json())["alert_id"])
                        else:
                            refused += 1
                except aiohttp.ClientError:
                    refused += 1
                    return

        async with aiohttp.ClientSession() as http:
            senders = [asyncio.create_task(sender(http, n)) for n in range(50)]
            await asyncio.sleep(0.3)
            await running.server.stop()  # what SIGTERM does, while requests are in flight
            await asyncio.gather(*senders)
    assert accepted, "the load should have been accepted before the stop"
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        stored = set((await conn.execute(select(Alert.id))).scalars().all())
    await engine.dispose()
    assert set(accepted) <= stored  # nothing answered 202 was lost
    print(f"\n{len(accepted)} accepted and all stored; {refused} refused during shutdown")
