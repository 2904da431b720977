"""The Redis Streams bus: at-least-once delivery, idempotent processing, reclaim, dead letters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import func, select

from oncall_server.ingest import bus
from oncall_server.runtime.app import App
from oncall_server.storage.models import Alert, Incident
from oncall_server.testing import Tenant, bootstrap, server_settings


@pytest.fixture
async def app(tmp_path: Path, database_url: str, redis_url: str, redis: Redis) -> AsyncIterator[App]:
    # A claim idle time no test waits out: a test that needs a message reclaimable lowers the
    # consumer's threshold (claim_idle_ms) to 0 instead of sleeping past it.
    settings = server_settings(
        tmp_path, database_url, redis_url, bus_claim_idle_ms=60_000, bus_max_deliveries=3
    )
    opened = await App.open(settings)
    yield opened
    await opened.close()


async def counts(app: App, tenant: Tenant) -> tuple[int, int]:
    async with app.sessions() as session:
        alerts = await session.scalar(select(func.count()).where(Alert.tenant_id == tenant.tenant_id))
        incidents = await session.scalar(select(func.count()).where(Incident.tenant_id == tenant.tenant_id))
    return int(alerts or 0), int(incidents or 0)


RMM = {
    "title": "CPU critical on client-server-01",
    "severity": "critical",
    "alert_id": "rmm-4821",
    "device_name": "cs-01",
}
BACKUP = {"event_type": "job_failure", "job_id": "job-17", "device_name": "fileserver"}


async def test_published_events_become_incidents_per_source(app: App) -> None:
    tenants = {s: await bootstrap(app, integration_type=s, tenant=f"t-{s}") for s in bus.SOURCES}
    consumer = bus.BusConsumer(app, "c1")
    await consumer.ensure_groups()
    await bus.publish(app.redis, "rmm", {**RMM, "tenant_id": tenants["rmm"].tenant_id})
    await bus.publish(
        app.redis,
        "security",
        {
            "event_id": "e1",
            "title": "Dark web hit",
            "severity": "high",
            "tenant_id": tenants["security"].tenant_id,
        },
    )
    await bus.publish(
        app.redis,
        "security",
        {
            "event_id": "e2",
            "title": "Posture drift",
            "severity": "medium",
            "tenant_id": tenants["security"].tenant_id,
        },
    )
    for _ in range(2):
        await bus.publish(app.redis, "backups", {**BACKUP, "tenant_id": tenants["backups"].tenant_id})
    await bus.publish(
        app.redis,
        "psa",
        {"ticket_id": "T-9", "breach_type": "response", "tenant_id": tenants["psa"].tenant_id},
    )
    assert await consumer.poll_once() == 6
    assert await counts(app, tenants["rmm"]) == (1, 1)
    assert await counts(app, tenants["security"]) == (1, 1)  # the medium event is dropped
    assert await counts(app, tenants["backups"]) == (2, 2)  # every backup failure is its own incident
    assert await counts(app, tenants["psa"]) == (1, 1)
    drops, per_rule = await app.pipeline.drops.latest(
        (await app.integrations.for_tenant(tenants["security"].tenant_id, "security")).integration_id, 10
    )
    assert [d.title for d in drops] == ["Posture drift"] and per_rule == {"-1": 1}
    rmm = (await app.incidents.list_incidents(tenants["rmm"].tenant_id, _all(), 10, ""))[0][0]
    assert (rmm.source, rmm.source_ref, rmm.severity) == ("rmm", "rmm-4821", 1)


def _all() -> Any:
    from oncall_server.incidents.actions import IncidentFilter

    return IncidentFilter()


@pytest.mark.parametrize(
    "crash_after_commit", [False, True], ids=["killed-before-commit", "killed-before-ack"]
)
async def test_a_consumer_killed_before_ack_is_reclaimed_and_processed_once(
    app: App, crash_after_commit: bool
) -> None:
    tenant = await bootstrap(app, integration_type="backups")
    dead = bus.BusConsumer(app, "dies")
    survivor = bus.BusConsumer(app, "survives")
    await dead.ensure_groups()
    await bus.publish(app.redis, "backups", {**BACKUP, "tenant_id": tenant.tenant_id})
    replies: Any = await app.redis.xreadgroup(app.settings.bus_group, "dies", {bus.stream_of("backups"): ">"})
    stream, messages = replies[0]
    if crash_after_commit:
        await dead.process(stream.decode(), messages, ack=False)  # committed, then killed before XACK
    assert await survivor.poll_once() == 0  # pending elsewhere: not redelivered to new reads
    assert await survivor.reclaim_once() == 0  # nor reclaimed before the claim idle time
    # Redis measures a pending message's idle time on its own clock (XAUTOCLAIM's min-idle-time), so
    # the injected clock cannot move it: the threshold moves instead, as if the idle time had passed.
    survivor.claim_idle_ms = 0
    assert await survivor.reclaim_once() == 1
    assert await counts(app, tenant) == (1, 1)  # exactly once in effect
    pending = await app.redis.xpending(bus.stream_of("backups"), app.settings.bus_group)
    assert pending["pending"] == 0


async def test_bad_messages_are_dead_lettered_after_n_failures_and_can_be_replayed(app: App) -> None:
    tenant = await bootstrap(app, integration_type="rmm")
    consumer = bus.BusConsumer(app, "c1")
    await consumer.ensure_groups()
    await bus.publish(
        app.redis, "rmm", {"title": "no severity", "alert_id": "a1", "tenant_id": tenant.tenant_id}
    )
    await app.redis.xadd(bus.stream_of("rmm"), {"payload": "{not json"})
    assert await consumer.poll_once() == 0
    consumer.claim_idle_ms = 0  # each failed message is reclaimable at once (see above)
    for _ in range(2):
        await consumer.reclaim_once()
    letters = await bus.dead_letters(app.redis)
    assert sorted(letter.error for letter in letters) == [
        "missing required fields: severity",
        "payload: is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
    ]
    assert (await app.redis.xpending(bus.stream_of("rmm"), app.settings.bus_group))["pending"] == 0
    assert await counts(app, tenant) == (0, 0)

    # Fix the cause (here: the tenant gets the missing field by a republish) or replay as is.
    missing = next(letter for letter in letters if "severity" in letter.error)
    await bus.replay(app.redis, missing.id)
    assert [letter.id for letter in await bus.dead_letters(app.redis)] != [] and missing.id not in {
        letter.id for letter in await bus.dead_letters(app.redis)
    }
    assert await consumer.poll_once() == 0  # still bad: it fails again, counting from zero


async def test_the_consumer_recreates_its_group_after_redis_loses_it(app: App) -> None:
    from oncall_server.testing import wait_for

    tenant = await bootstrap(app, integration_type="rmm")
    consumer = bus.BusConsumer(app, "c1")
    await consumer.start()
    try:
        await app.redis.flushall()  # streams and consumer group gone

        async def group_recreated() -> bool:  # the consumer polls into NOGROUP and recreates it
            try:
                groups = await app.redis.xinfo_groups(bus.stream_of("rmm"))
            except ResponseError:  # no such stream yet
                return False
            names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
            return app.settings.bus_group in names

        await wait_for(group_recreated, timeout=5)
        await bus.publish(app.redis, "rmm", {**RMM, "tenant_id": tenant.tenant_id})

        async def stored() -> bool:
            return await counts(app, tenant) == (1, 1)

        await wait_for(stored, timeout=5)
    finally:
        await consumer.stop()


async def test_a_message_nested_too_deep_is_dead_lettered_not_retried_forever(app: App) -> None:
    """A RecursionError used to escape the consumer: the message was retried without end."""
    consumer = bus.BusConsumer(app, "deep")
    consumer.max_deliveries = 1
    await consumer.ensure_groups()
    deep = "[" * 5000 + "]" * 5000
    await app.redis.xadd(bus.stream_of("rmm"), {"payload": deep})
    assert await consumer.poll_once() == 1  # finished with at once: dead-lettered
    [letter] = await bus.dead_letters(app.redis)
    assert "nested more than" in letter.error
    assert (await app.redis.xpending(bus.stream_of("rmm"), app.settings.bus_group))["pending"] == 0
