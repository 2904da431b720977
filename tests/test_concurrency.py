"""Exactly one incident per dedup key and per grouping window, under concurrency and Redis loss.

Two server processes (this test process and a subprocess) share one Redis and
one database. On SQLite the two processes share the file through SQLite's own
locking (WAL); on PostgreSQL they share the server.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from oncall_server.storage.models import Alert, Incident
from oncall_server.testing import RunningServer, Tenant, bootstrap

SENDERS = 200


@pytest.fixture
async def second_server(tmp_path: Path, database_url: str, redis_url: str) -> AsyncIterator[str]:
    """Another oncall-server process on the same database and Redis; yields its HTTP base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oncall_server.runtime.cli", "serve",
        "--data-dir", str(tmp_path / "second"), "--database-url", database_url, "--redis-url", redis_url,
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        env={**env, "ONCALL_ACCESS_LOG": "false"}, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    port = None
    lines: list[str] = []
    try:
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            if not line:
                raise AssertionError("second server exited:\n" + "".join(lines))
            lines.append(line)
            if match := re.search(r"HTTP gateway listening on port (\d+)", line):
                port = match.group(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def storm(urls: list[str], tenant: Tenant, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send bodies from SENDERS concurrent senders, alternating between the servers."""
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for item in enumerate(bodies):
        queue.put_nowait(item)
    results: list[dict[str, Any]] = [{}] * len(bodies)
    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def sender(n: int) -> None:
            url = f"{urls[n % len(urls)]}/api/webhooks/ingest?key={tenant.integration_key}"
            while not queue.empty():
                index, body = queue.get_nowait()
                for _ in range(20):  # like real senders, retry 503 (nothing was stored)
                    async with http.post(url, json=body) as response:
                        if response.status == 503:
                            await asyncio.sleep(0.05)
                            continue
                        assert response.status == 202, await response.text()
                        results[index] = await response.json()
                        break
                assert results[index], "never accepted"

        await asyncio.gather(*(sender(n) for n in range(SENDERS)))
    return results


async def open_counts(server: RunningServer, tenant: Tenant) -> tuple[int, int, int]:
    async with server.app.sessions() as session:
        incidents = await session.scalar(select(func.count()).where(Incident.service_id == tenant.service_id))
        alerts = await session.scalar(select(func.count()).where(Alert.service_id == tenant.service_id))
        occurrences = await session.scalar(
            select(func.sum(Alert.occurrence_count)).where(Alert.service_id == tenant.service_id)
        )
    return int(incidents or 0), int(alerts or 0), int(occurrences or 0)


@pytest.mark.slow
async def test_dedup_keys_across_two_processes(server: RunningServer, second_server: str) -> None:
    tenant = await bootstrap(server.app)
    keys = 20
    bodies = [{"title": f"disk {i % keys}", "dedup_key": f"dev-{i % keys}"} for i in range(1000)]
    started = time.perf_counter()
    results = await storm([server.http_url, second_server], tenant, bodies)
    elapsed = time.perf_counter() - started
    assert await open_counts(server, tenant) == (keys, keys, 1000)
    assert sum(r["outcome"] == "created" for r in results) == keys
    by_key: dict[str, set[str]] = {}
    for body, result in zip(bodies, results, strict=True):
        by_key.setdefault(body["dedup_key"], set()).add(result["incident_id"])
    assert all(len(ids) == 1 for ids in by_key.values())  # every caller was told the one incident
    print(f"\n1000 alerts, {SENDERS} senders, 2 processes: {keys} incidents in {elapsed:.2f}s")


@pytest.mark.slow
async def test_one_grouping_window_across_two_processes(server: RunningServer, second_server: str) -> None:
    tenant = await bootstrap(server.app, alert_grouping="time", alert_grouping_timeout_minutes=5)
    bodies = [{"title": f"host {i} down", "dedup_key": f"host-{i}", "severity": "high"} for i in range(600)]
    results = await storm([server.http_url, second_server], tenant, bodies)
    assert await open_counts(server, tenant) == (1, 600, 600)
    assert [r["outcome"] for r in results].count("created") == 1
    assert len({r["incident_id"] for r in results}) == 1


@pytest.mark.slow
async def test_redis_flushed_mid_stream_loses_nothing_and_duplicates_nothing(
    server: RunningServer, redis: Redis
) -> None:
    tenant = await bootstrap(server.app, alert_grouping="time", alert_grouping_timeout_minutes=5)
    first = await storm([server.http_url], tenant, [{"title": "a", "dedup_key": "k-0", "severity": "high"}])
    bodies = [{"title": f"t{i}", "dedup_key": f"k-{i % 10}", "severity": "high"} for i in range(500)]
    stop = asyncio.Event()

    async def flusher() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            await redis.flushall()

    chaos = asyncio.create_task(flusher())
    try:
        results = await storm([server.http_url], tenant, bodies)
    finally:
        stop.set()
        await chaos
    # One grouping window: the first alert's incident holds all ten keys; nothing lost, nothing doubled.
    if (await open_counts(server, tenant))[0] != 1:
        async with server.app.sessions() as s:
            for row in (
                await s.execute(
                    select(
                        Incident.id,
                        Incident.title,
                        Incident.alert_count,
                        Incident.created_at,
                        Incident.last_alert_at,
                    )
                )
            ).all():
                print("INCIDENT", row)
            for row in (
                await s.execute(
                    select(Alert.dedup_key, Alert.incident_id, Alert.occurrence_count, Alert.state)
                )
            ).all():
                print("ALERT", row)
    assert await open_counts(server, tenant) == (1, 10, 501)
    assert {r["incident_id"] for r in results} == {first[0]["incident_id"]}
