"""Two scheduler processes against one Redis and one database; one is killed mid-run.

Every escalation step must fire exactly once — once on the timeline, once in
the outbox — and every page must reach the receiver. Real processes, real
time (1-second tiers), a real webhook receiver on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from oncall_server.storage.models import Incident, Notification, TimelineEntry
from oncall_server.testing import (
    add_policy,
    add_user,
    bootstrap,
    running_server,
    server_settings,
    wait_for,
)
from tests.helpers import WebhookReceiver, post_json

pytestmark = pytest.mark.slow
INCIDENTS = 40
TIERS = 3


async def start_scheduler(
    tmp_path: Path, name: str, database_url: str, redis_url: str
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    env |= {
        "ONCALL_ROLES": "scheduler,notifier",
        "ONCALL_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "ONCALL_SCHEDULER_POLL_SECONDS": "0.05",
        "ONCALL_NOTIFY_POLL_SECONDS": "0.05",
        "ONCALL_SCHEDULER_LEASE_SECONDS": "2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oncall_server.runtime.cli", "serve",
        "--data-dir", str(tmp_path / name), "--database-url", database_url, "--redis-url", redis_url,
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        if not line:
            raise AssertionError(f"{name} exited:\n" + "".join(lines))
        lines.append(line)
        if "notifier running" in line:
            break

    async def drain() -> None:  # keep the pipe from filling up
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc


async def test_two_schedulers_one_killed_every_step_fires_exactly_once(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis: Redis,
    webhook_receiver: WebhookReceiver,
) -> None:
    hook_url = webhook_receiver.url
    settings = server_settings(tmp_path, database_url, redis_url, roles=("grpc", "gateway"))
    async with running_server(settings) as ingest:
        app = ingest.app
        tenant = await bootstrap(app)
        users = [
            await add_user(app, tenant.tenant_id, f"tech{i}", contacts=[("webhook", hook_url, "s3cret")])
            for i in range(TIERS)
        ]
        await add_policy(
            app, tenant.tenant_id, [(1, [("user", u)]) for u in users], service_id=tenant.service_id
        )
        first = await start_scheduler(tmp_path, "first", database_url, redis_url)
        second = await start_scheduler(tmp_path, "second", database_url, redis_url)
        try:
            await asyncio.gather(
                *(
                    post_json(
                        f"{ingest.http_url}/api/webhooks/ingest?key={tenant.integration_key}",
                        {"title": f"i{n}"},
                    )
                    for n in range(INCIDENTS)
                )
            )
            await asyncio.sleep(1.3)  # tier 2 is being worked on by both
            first.send_signal(signal.SIGKILL)
            await first.wait()

            async def all_done() -> bool:
                async with app.sessions() as session:
                    pending = await session.scalar(
                        select(func.count())
                        .select_from(Incident)
                        .where(Incident.escalation_due_at.is_not(None))
                    )
                    unsent = await session.scalar(
                        select(func.count()).select_from(Notification).where(Notification.status != "sent")
                    )
                return pending == 0 and unsent == 0

            await wait_for(all_done, timeout=60, interval=0.2)
        finally:
            for proc in (first, second):
                if proc.returncode is None:
                    proc.terminate()
                    await proc.wait()

        async with app.sessions() as session:
            steps = Counter(
                (incident_id, details["tier"])
                for incident_id, details in (
                    await session.execute(
                        select(TimelineEntry.incident_id, TimelineEntry.details).where(
                            TimelineEntry.kind == "escalated"
                        )
                    )
                ).all()
            )
            notifications = (await session.scalars(select(Notification.id))).all()
    assert len(steps) == INCIDENTS * TIERS
    assert set(steps.values()) == {1}, "a step fired twice"
    assert len(notifications) == INCIDENTS * TIERS
    deliveries = Counter(headers["X-OnCall-Notification-Id"] for headers, _ in webhook_receiver.received)
    assert set(deliveries) == set(notifications), "a page never arrived"
    # At-least-once delivery: only a page in flight at the kill may arrive twice.
    repeated = sum(count - 1 for count in deliveries.values())
    assert repeated <= 2 * 8, repeated
