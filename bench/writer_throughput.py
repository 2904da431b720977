"""Group commit versus one transaction per alert, in process, on SQLite and PostgreSQL.

Drives the real GroupCommitWriter (real Redis decisions, real SQL) from N
concurrent submitters, each sending alerts one at a time as webhook requests
would, and compares with committing each alert alone (batch size 1).
Prints alerts/s; bounded in count and time; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from oncall_server.ingest.model import NormalizedEvent, PreparedAlert
from oncall_server.redis_embedded import EmbeddedRedis
from oncall_server.runtime.app import App
from oncall_server.runtime.settings import Settings
from oncall_server.severity import Severity
from oncall_server.testing import bootstrap, create_scratch_postgres, drop_scratch_postgres


async def run_once(
    app: App,
    service_id: str,
    tenant_id: str,
    integration_id: str,
    *,
    alerts: int,
    concurrency: int,
    same_key: bool,
) -> float:
    per_worker = alerts // concurrency
    now = app.clock.now()

    async def worker(w: int) -> None:
        for i in range(per_worker):
            event = NormalizedEvent(
                title=f"disk full {w}-{i}",
                severity=Severity.HIGH,
                dedup_key="storm" if same_key else f"k-{w}-{i}-{time.monotonic_ns()}",
            )
            await app.writer.submit([PreparedAlert(tenant_id, service_id, integration_id, 0, event, now)])

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started)


async def measure(
    database_url: str, redis_url: str, batch_size: int, args: argparse.Namespace
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        settings = Settings(
            data_dir=Path(tmp), database_url=database_url, redis_url=redis_url, write_batch_size=batch_size
        )
        app = await App.open(settings)
        try:
            tenant = await bootstrap(app)
            figures = {}
            for label, same_key in (("distinct keys", False), ("one key (storm)", True)):
                runs = [
                    await run_once(
                        app,
                        tenant.service_id,
                        tenant.tenant_id,
                        tenant.integration_id,
                        alerts=args.alerts,
                        concurrency=args.concurrency,
                        same_key=same_key,
                    )
                    for _ in range(args.runs)
                ]
                figures[label] = statistics.median(runs)
            return figures
        finally:
            await app.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a scratch database is made)")
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis_dir = Path(tempfile.mkdtemp(prefix="bench-redis-", dir="/tmp"))
    async with EmbeddedRedis(redis_dir) as redis:
        backends = {"sqlite": f"sqlite+aiosqlite:///{redis_dir / 'bench.db'}"}
        if args.postgres:
            backends["postgresql"] = await create_scratch_postgres(args.postgres)
        results = {}
        try:
            for name, url in backends.items():
                for batch in (1, 500):
                    await Redis.from_url(redis.url).flushdb()
                    results[f"{name} batch<={batch}"] = await measure(url, redis.url, batch, args)
        finally:
            if args.postgres:
                await drop_scratch_postgres(args.postgres, backends["postgresql"])
    print(
        f"{args.alerts} alerts x {args.runs} runs, {args.concurrency} concurrent submitters (median alerts/s)"
    )
    print(f"{'configuration':28} {'distinct keys':>14} {'one key (storm)':>16}")
    for name, figures in results.items():
        print(f"{name:28} {figures['distinct keys']:>14,.0f} {figures['one key (storm)']:>16,.0f}")
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
