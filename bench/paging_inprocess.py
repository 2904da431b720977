"""Ingest + tier-1 paging cost per new incident, in process (no network, no load generator).

Opens the real App (SQLite, or a scratch PostgreSQL database), gives its service a one-tier policy
paging a ``log`` user, marks the dispatcher as running so tier-1 pages are handed over as in a
server, and submits N new-incident alerts to the group-commit writer in batches of B. Prints
process CPU µs per incident (SQLite's work included; PostgreSQL's server is another process) and
wall µs, with the hand-over's sends drained. What the profile-and-fix loop of docs/performance.md
measured; asserts nothing. ``--trips`` also counts, per batch, the trips to SQLite's thread
(calls into aiosqlite's ``Connection._execute``) and the Redis round trips (commands or pipelines
sent), after a warm-up of three batches; the counting costs CPU, so take CPU figures from a run
without it. ``--no-dispatch`` writes the pages pending and sends none: the difference is the
dispatcher's send and record.

    .venv/bin/python bench/paging_inprocess.py --incidents 2000 --batch 64 [--postgres URL] [--trips]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
from redis.asyncio.connection import AbstractConnection

from oncall_server.ingest.model import NormalizedEvent, PreparedAlert
from oncall_server.redis_embedded import EmbeddedRedis
from oncall_server.runtime.app import App
from oncall_server.runtime.settings import Settings
from oncall_server.severity import Severity
from oncall_server.testing import (
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    create_scratch_postgres,
    drop_scratch_postgres,
)


@contextlib.asynccontextmanager
async def paged_service(
    database_url: str, redis_url: str, data_dir: Path
) -> AsyncIterator[tuple[App, Tenant]]:
    """The real App with a service whose one-tier policy pages a ``log`` user, dispatcher on."""
    app = await App.open(Settings(data_dir=data_dir, database_url=database_url, redis_url=redis_url))
    try:
        tenant = await bootstrap(app)
        user_id = await add_user(app, tenant.tenant_id, "Alice")
        await add_policy(app, tenant.tenant_id, [(300, [("user", user_id)])], service_id=tenant.service_id)
        app.dispatcher.running = True  # pages due now are written claimed and handed over, as in `serve`
        yield app, tenant
    finally:
        await app.close()


async def ingest_new_incidents(app: App, tenant: Tenant, incidents: int, batch: int) -> None:
    """``incidents`` alerts with fresh dedup keys, ``batch`` per writer submit, pages sent."""
    now = app.clock.now()
    for start in range(0, incidents, batch):
        alerts = [
            PreparedAlert(
                tenant.tenant_id,
                tenant.service_id,
                tenant.integration_id,
                0,
                NormalizedEvent(title=f"disk full {i}", severity=Severity.HIGH, dedup_key=f"k{i}-{start}"),
                now,
            )
            for i in range(start, min(incidents, start + batch))
        ]
        await app.writer.submit(alerts)
    await app.dispatcher.drain()


@contextlib.contextmanager
def counting_trips(counts: collections.Counter[str]) -> Iterator[None]:
    """Inside, count trips to SQLite's thread and Redis round trips into ``counts``."""
    # aiosqlite leaves this private coroutine method unannotated: (self, fn, *args, **kwargs) -> result
    execute: Callable[..., Coroutine[Any, Any, Any]] = aiosqlite.Connection._execute
    send = AbstractConnection.send_packed_command

    async def counted_execute(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counts["sqlite"] += 1
        return await execute(self, fn, *args, **kwargs)

    async def counted_send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        counts["redis"] += 1
        await send(self, *args, **kwargs)

    aiosqlite.Connection._execute = counted_execute  # type: ignore[method-assign]
    AbstractConnection.send_packed_command = counted_send  # type: ignore[method-assign]
    try:
        yield
    finally:
        aiosqlite.Connection._execute = execute  # type: ignore[method-assign]
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


async def measure(database_url: str, redis_url: str, data_dir: Path, args: argparse.Namespace) -> None:
    incidents, batch, trips = args.incidents, args.batch, args.trips
    async with paged_service(database_url, redis_url, data_dir) as (app, tenant):
        if args.no_dispatch:
            app.dispatcher.running = False  # pages are written pending, nothing is handed over
        counts: collections.Counter[str] = collections.Counter()
        if trips:
            await ingest_new_incidents(app, tenant, 3 * batch, batch)  # warm-up
        with counting_trips(counts) if trips else contextlib.nullcontext():
            cpu, wall = time.process_time(), time.perf_counter()
            await ingest_new_incidents(app, tenant, incidents, batch)
            cpu_us = (time.process_time() - cpu) / incidents * 1e6
            wall_us = (time.perf_counter() - wall) / incidents * 1e6
        backend = app.engine.dialect.name
        batches = -(-incidents // batch)
        per_batch = (
            f"; per batch: {counts['sqlite'] / batches:.1f} trips to SQLite's thread, "
            f"{counts['redis'] / batches:.1f} Redis round trips"
            if trips
            else ""
        )
        print(
            f"{backend:10} {incidents} incidents, batches of {batch}: "
            f"{cpu_us:.0f} µs CPU, {wall_us:.0f} µs wall per incident{per_batch}"
            + (" (pages not sent)" if args.no_dispatch else "")
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--incidents", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a scratch database is made)")
    parser.add_argument("--trips", action="store_true", help="count trips to SQLite and Redis per batch")
    parser.add_argument(
        "--no-dispatch",
        action="store_true",
        help="write the pages pending and send none: the cost without the dispatcher's send and record",
    )
    args = parser.parse_args()
    logging.getLogger("oncall.notifications").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-paging-", dir="/tmp") as tmp:
        async with EmbeddedRedis(Path(tmp)) as redis:
            await measure(f"sqlite+aiosqlite:///{tmp}/bench.db", redis.url, Path(tmp), args)
            if args.postgres:
                url = await create_scratch_postgres(args.postgres)
                try:
                    await measure(url, redis.url, Path(tmp), args)
                finally:
                    await drop_scratch_postgres(args.postgres, url)


if __name__ == "__main__":
    asyncio.run(main())
