"""Paging: escalation tiers on time, once, and never after an acknowledgement.

Real Redis, SQLite and PostgreSQL, a fake clock. Most tests run the server
without its scheduler and notifier loops and drive them by hand
(``settle``), so "nothing else was sent" is a fact, not a timeout; one test
runs the real loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import func, select, update

from oncall_server.clock import FakeClock
from oncall_server.runtime.app import App
from oncall_server.storage.models import EscalationPolicy, Incident, Notification, Service, TimelineEntry
from oncall_server.testing import (
    CaptureChannel,
    CapturePlugin,
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    running_server,
    server_settings,
    settle,
    wait_for,
)
from tests.helpers import post_json

MINUTE = 60


async def advance(app: App, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    await settle(app)


async def user(app: App, tenant: Tenant, name: str, **kwargs: object) -> str:
    kwargs.setdefault("contacts", [("capture", name, "")])
    return await add_user(app, tenant.tenant_id, name, **kwargs)  # type: ignore[arg-type]


async def trigger(server: RunningServer, tenant: Tenant, body: dict[str, object]) -> str:
    status, answer = await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}", body
    )
    assert status == 202, answer
    return str(answer["incident_id"])


async def act(server: RunningServer, tenant: Tenant, verb: str, incident_id: str, **body: str) -> None:
    app = server.app
    if verb == "ack":
        await app.incidents.acknowledge(tenant.tenant_id, incident_id, body.get("actor", "alice"))
    elif verb == "unack":
        await app.incidents.unacknowledge(tenant.tenant_id, incident_id, body.get("actor", "alice"))
    elif verb == "resolve":
        await app.incidents.resolve(tenant.tenant_id, incident_id, body.get("actor", "alice"), "done")


async def three_tiers(app: App, tenant: Tenant) -> tuple[str, str, str]:
    alice, bob, carol = [await user(app, tenant, n) for n in ("alice", "bob", "carol")]
    # Tier 1 at once, tier 2 after 5 minutes, tier 3 after 15 (10 minutes after tier 2).
    await add_policy(
        app,
        tenant.tenant_id,
        [(5 * MINUTE, [("user", alice)]), (10 * MINUTE, [("user", bob)]), (30 * MINUTE, [("user", carol)])],
        service_id=tenant.service_id,
    )
    return alice, bob, carol


async def timeline(app: App, incident_id: str, kind: str) -> list[TimelineEntry]:
    async with app.sessions() as session:
        rows = await session.scalars(
            select(TimelineEntry)
            .where(TimelineEntry.incident_id == incident_id, TimelineEntry.kind == kind)
            .order_by(TimelineEntry.created_at, TimelineEntry.id)
        )
        return list(rows.all())


async def test_tiers_are_paged_at_0_5_and_15_minutes_and_nothing_else(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    incident_id = await trigger(server, tenant, {"title": "disk full", "severity": "critical"})
    await settle(app)
    assert channel.addresses == ["alice"]
    page = channel.to("alice")[0]
    assert (page.incident_id, page.tier, page.title, page.severity) == (
        incident_id,
        1,
        "disk full",
        "critical",
    )
    assert page.service_name == "Default Service"
    assert page.incident_url.endswith(f"/incidents/{incident_id}")

    await advance(app, clock, 5 * MINUTE - 1)
    assert channel.addresses == ["alice"]
    await advance(app, clock, 1)
    assert channel.addresses == ["alice", "bob"]
    await advance(app, clock, 10 * MINUTE - 1)
    assert channel.addresses == ["alice", "bob"]
    await advance(app, clock, 1)
    assert channel.addresses == ["alice", "bob", "carol"]
    await advance(app, clock, 6 * 3600)
    assert channel.addresses == ["alice", "bob", "carol"]

    escalated = await timeline(app, incident_id, "escalated")
    assert [e.details["tier"] for e in escalated] == ["1", "2", "3"]
    assert "last tier" in escalated[-1].message
    notified = await timeline(app, incident_id, "notification")
    assert [e.details["status"] for e in notified] == ["sent"] * 3


async def test_repeat_runs_the_policy_again(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    alice, bob = await user(app, tenant, "alice"), await user(app, tenant, "bob")
    await add_policy(
        app,
        tenant.tenant_id,
        [(MINUTE, [("user", alice)]), (MINUTE, [("user", bob)])],
        repeat_count=1,
        service_id=tenant.service_id,
    )
    await trigger(server, tenant, {"title": "x"})
    await settle(app)
    for _ in range(6):
        await advance(app, clock, MINUTE)
    assert channel.addresses == ["alice", "bob", "alice", "bob"]
    assert [p.loop for p, _ in channel.sent] == [0, 0, 1, 1]


async def test_acknowledge_stops_escalation_and_cancels_delayed_notifications(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    # Alice wants a second channel two minutes after the first, unless she acknowledges.
    alice = await user(
        app,
        tenant,
        "alice",
        contacts=[("capture", "alice-push", ""), ("capture", "alice-sms", "")],
        rules=[(0, 0), (1, 2 * MINUTE)],
    )
    bob = await user(app, tenant, "bob")
    await add_policy(
        app,
        tenant.tenant_id,
        [(5 * MINUTE, [("user", alice)]), (5 * MINUTE, [("user", bob)])],
        service_id=tenant.service_id,
    )
    incident_id = await trigger(server, tenant, {"title": "x"})
    await settle(app)
    assert channel.addresses == ["alice-push"]
    await advance(app, clock, MINUTE)
    await act(server, tenant, "ack", incident_id)
    await advance(app, clock, 3600)
    assert channel.addresses == ["alice-push"]
    async with app.sessions() as session:
        statuses = dict(
            (
                await session.execute(
                    select(Notification.channel, Notification.status).where(
                        Notification.incident_id == incident_id, Notification.status == "cancelled"
                    )
                )
            ).all()
        )
    assert statuses == {"capture": "cancelled"}  # alice-sms never went out


async def test_unacknowledge_restarts_from_tier_one_and_resolve_stops_it(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    incident_id = await trigger(server, tenant, {"title": "x"})
    await settle(app)
    await advance(app, clock, 5 * MINUTE)
    assert channel.addresses == ["alice", "bob"]
    await act(server, tenant, "ack", incident_id)
    await advance(app, clock, 30 * MINUTE)
    assert channel.addresses == ["alice", "bob"]
    await act(server, tenant, "unack", incident_id)
    await settle(app)
    assert channel.addresses == ["alice", "bob", "alice"]
    await advance(app, clock, 5 * MINUTE)
    assert channel.addresses == ["alice", "bob", "alice", "bob"]
    await act(server, tenant, "resolve", incident_id)
    await advance(app, clock, 3600)
    assert channel.addresses == ["alice", "bob", "alice", "bob"]


async def test_policy_edits_do_not_change_a_running_escalation(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    await trigger(server, tenant, {"title": "x"})
    await settle(app)
    dave = await user(app, tenant, "dave")
    async with app.sessions.begin() as session:
        await session.execute(
            update(EscalationPolicy).values(
                tiers=[{"delay_seconds": 60, "targets": [{"type": "user", "id": dave}]}]
            )
        )
    await advance(app, clock, 15 * MINUTE)
    assert channel.addresses == ["alice", "bob", "carol"]
    # A new incident follows the edited policy.
    await trigger(server, tenant, {"title": "y"})
    await settle(app)
    assert channel.addresses[-1] == "dave"


async def test_schedule_target_pages_whoever_is_on_call(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    from oncall_server.ids import uuid7
    from oncall_server.storage.models import OnCallSchedule

    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    alice, bob = await user(app, tenant, "alice"), await user(app, tenant, "bob")
    schedule_id = uuid7()
    now = clock.now()
    async with app.sessions.begin() as session:
        session.add(
            OnCallSchedule(
                id=schedule_id,
                tenant_id=tenant.tenant_id,
                name="primary",
                time_zone="UTC",
                # Daily handoff at 09:00: alice on the 1st of March, bob on the 2nd.
                layers=[
                    {
                        "members": [alice, bob],
                        "start": "2026-02-28T09:00:00",
                        "rotation_length": 1,
                        "rotation_unit": "days",
                        "end": None,
                    }
                ],
                overrides=[],
                created_at=now,
                updated_at=now,
            )
        )
    await add_policy(
        app, tenant.tenant_id, [(5 * MINUTE, [("schedule", schedule_id)])], service_id=tenant.service_id
    )
    await trigger(server, tenant, {"title": "noon", "dedup_key": "a"})  # 2026-03-01 12:00 UTC
    await settle(app)
    clock.set(now + timedelta(days=1))
    await trigger(server, tenant, {"title": "next noon", "dedup_key": "b"})
    await settle(app)
    assert [(p.title, d.address) for p, d in channel.sent] == [("noon", "bob"), ("next noon", "alice")]


async def test_a_step_run_twice_pages_nobody_twice(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    incident_id = await trigger(server, tenant, {"title": "x"})
    await settle(app)
    # Redis forgets it ran step 0 and hands it out again (a lease expired, a rebuild raced).
    from oncall_server.clock import to_millis
    from oncall_server.paging.escalation_state import step_member

    await app.escalator.due.add([(step_member(incident_id, 1, 0), to_millis(clock.now()))])
    await settle(app)
    # And the outbox refuses a second row for the same step and person even if SQL is rewound.
    async with app.sessions.begin() as session:
        await session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(escalation_step=0, escalation_due_at=clock.now())
        )
    await app.escalator.due.add([(step_member(incident_id, 1, 0), to_millis(clock.now()))])
    await settle(app)
    assert channel.addresses == ["alice"]
    async with app.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Notification))
    assert count == 1


async def test_redis_loss_rebuilds_pending_steps_from_sql(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock, redis: Redis
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    await trigger(server, tenant, {"title": "x"})
    await settle(app)
    await redis.flushall()
    await advance(app, clock, 5 * MINUTE)
    assert channel.addresses == ["alice", "bob"]


async def test_acknowledgement_timeout_retriggers(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    async with app.sessions.begin() as session:
        await session.execute(
            update(Service)
            .where(Service.id == tenant.service_id)
            .values(acknowledgement_timeout_seconds=1800)
        )
    incident_id = await trigger(server, tenant, {"title": "x"})
    await settle(app)
    await act(server, tenant, "ack", incident_id)
    await advance(app, clock, 30 * MINUTE - 1)
    assert channel.addresses == ["alice"]
    await advance(app, clock, 1)
    assert channel.addresses == ["alice", "alice"]
    incident = await app.incidents.get(tenant.tenant_id, incident_id)
    assert incident.status == "triggered"
    [entry] = await timeline(app, incident_id, "unacknowledged")
    assert entry.actor == "system" and "timed out" in entry.message


async def test_auto_resolve_after_quiet_period_and_new_alerts_postpone_it(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, _ = paging
    app = server.app
    tenant = await bootstrap(app)
    async with app.sessions.begin() as session:
        await session.execute(
            update(Service).where(Service.id == tenant.service_id).values(auto_resolve_seconds=3600)
        )
    incident_id = await trigger(server, tenant, {"title": "x", "dedup_key": "k"})
    await settle(app)
    await advance(app, clock, 50 * MINUTE)
    assert await trigger(server, tenant, {"title": "x", "dedup_key": "k"}) == incident_id
    await advance(app, clock, 50 * MINUTE)
    assert (await app.incidents.get(tenant.tenant_id, incident_id)).status == "triggered"
    await advance(app, clock, 10 * MINUTE)
    incident = await app.incidents.get(tenant.tenant_id, incident_id)
    assert incident.status == "resolved"
    assert incident.resolved_by == "system" and "Auto-resolved" in incident.resolution_summary


async def test_reassign_pages_the_new_assignee_and_records_who(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    dave = await user(app, tenant, "dave")
    incident_id = await trigger(server, tenant, {"title": "x"})
    await settle(app)
    await act(server, tenant, "ack", incident_id)
    incident = await app.incidents.reassign(tenant.tenant_id, incident_id, "dave@example.com", "alice")
    await settle(app)
    assert incident.assigned_to == dave
    assert channel.addresses == ["alice", "dave"]
    assert channel.sent[-1][0].kind == "assigned"
    [entry] = await timeline(app, incident_id, "reassigned")
    assert entry.actor == "alice" and "dave" in entry.message


async def test_failed_sends_are_retried_and_recorded_then_delivered_once(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    incident_id = await trigger(server, tenant, {"title": "x"})
    channel.failing = True
    await settle(app)
    for delay in (1, 2, 4):  # backoff doubles
        await advance(app, clock, delay)
    channel.failing = False
    await advance(app, clock, 8)
    await advance(app, clock, 60)
    assert channel.addresses == ["alice"]
    statuses = [e.details["status"] for e in await timeline(app, incident_id, "notification")]
    assert statuses == ["retrying"] * 4 + ["sent"]


async def test_no_escalation_policy_says_so_on_the_timeline(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    tenant = await bootstrap(server.app)
    incident_id = await trigger(server, tenant, {"title": "x"})
    await settle(server.app)
    [entry] = await timeline(server.app, incident_id, "escalated")
    assert "nobody is paged" in entry.message
    assert channel.sent == []


async def test_ack_racing_the_next_tier_never_pages_after_the_ack(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    """200 races of an acknowledgement against tier 2's deadline: no page is claimed after the ack.

    Every fourth attempt the escalation finishes before the ack starts (bob is paged, before the
    ack), every fourth the ack commits before the escalation starts (nobody is paged), and the rest
    race freely: both outcomes happen in every run, not by chance.
    """
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    alice, bob = await user(app, tenant, "alice"), await user(app, tenant, "bob")
    await add_policy(
        app,
        tenant.tenant_id,
        [(MINUTE, [("user", alice)]), (MINUTE, [("user", bob)])],
        service_id=tenant.service_id,
    )
    orders = ("escalation first", "ack first", "race", "race")
    paged_before_ack = dict.fromkeys(orders, 0)
    for attempt in range(200):
        order = orders[attempt % len(orders)]
        incident_id = await trigger(server, tenant, {"title": f"race {attempt}"})
        await settle(app)
        clock.advance(MINUTE)  # tier 2 is due now
        done = {"escalation": asyncio.Event(), "ack": asyncio.Event()}

        async def escalate(
            attempt: int = attempt, order: str = order, done: dict[str, asyncio.Event] = done
        ) -> None:
            if order == "ack first":
                await done["ack"].wait()
            else:
                await asyncio.sleep(0.0005 * (attempt % 3))
            await app.escalator.tick()
            await app.dispatcher.run_once()
            done["escalation"].set()

        async def acknowledge(
            attempt: int = attempt,
            incident_id: str = incident_id,
            order: str = order,
            done: dict[str, asyncio.Event] = done,
        ) -> set[str]:
            if order == "escalation first":
                await done["escalation"].wait()
            else:
                # From "before the step" to "after the page": 0-19 ms, so both sides win some races.
                await asyncio.sleep(0.0004 * (attempt % 50))
            await act(server, tenant, "ack", incident_id)
            done["ack"].set()
            async with app.sessions() as session:  # what was claimed before the ack committed
                return set(
                    (
                        await session.scalars(
                            select(Notification.id).where(
                                Notification.incident_id == incident_id,
                                Notification.tier == 1,
                                Notification.status.in_(("sending", "delivering", "sent")),
                            )
                        )
                    ).all()
                )

        _, claimed_before = await asyncio.gather(escalate(), acknowledge())
        await settle(app)
        to_bob = {p.notification_id for p in channel.to("bob") if p.incident_id == incident_id}
        assert to_bob <= claimed_before, f"attempt {attempt} ({order}): bob paged after the ack"
        paged_before_ack[order] += len(to_bob)
        await act(server, tenant, "resolve", incident_id)
    print(f"bob paged before the ack, by order of 50 / 50 / 100 attempts: {paged_before_ack}")
    # Both orders happened: a step run before the ack pages, one run after it pages nobody.
    assert paged_before_ack["escalation first"] == 50, paged_before_ack
    assert paged_before_ack["ack first"] == 0, paged_before_ack


async def test_real_loops_page_without_being_driven(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, clock: FakeClock
) -> None:
    settings = server_settings(
        tmp_path, database_url, redis_url, scheduler_poll_seconds=0.05, notify_poll_seconds=0.05
    )
    async with running_server(settings, clock=clock) as server:
        channel = CaptureChannel()
        server.app.plugins.register(CapturePlugin(channel), "capture-test")
        app = server.app
        tenant = await bootstrap(app)
        await three_tiers(app, tenant)
        await trigger(server, tenant, {"title": "x"})

        def paged(*names: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return channel.addresses == list(names)

            return check

        await wait_for(paged("alice"))
        clock.advance(5 * MINUTE)
        await wait_for(paged("alice", "bob"))


async def test_webhook_receiver_down_for_a_while_gets_the_page_once_when_back(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, clock: FakeClock
) -> None:
    """The real webhook channel against a receiver that is down (503, then not listening), then up."""
    from aiohttp import web

    received: list[dict[str, object]] = []
    state = {"mode": "503"}

    async def receive(request: web.Request) -> web.Response:
        if state["mode"] == "503":
            return web.Response(status=503)
        received.append(await request.json())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = server_settings(
        tmp_path, database_url, redis_url, roles=("grpc", "gateway"), webhook_allowed_networks=["127.0.0.0/8"]
    )
    try:
        async with running_server(settings, clock=clock) as server:
            app = server.app
            tenant = await bootstrap(app)
            alice = await add_user(
                app, tenant.tenant_id, "alice", contacts=[("webhook", f"http://127.0.0.1:{port}/hook", "k")]
            )
            await add_policy(app, tenant.tenant_id, [(3600, [("user", alice)])], service_id=tenant.service_id)
            incident_id = await trigger(server, tenant, {"title": "router down"})
            await settle(app)  # attempt 1: 503
            await site.stop()  # now nothing listens at all
            await advance(app, clock, 1)  # attempt 2: connection refused
            await advance(app, clock, 2)  # attempt 3: connection refused
            state["mode"] = "up"
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            await advance(app, clock, 4)  # attempt 4: delivered
            await advance(app, clock, 600)
            assert [(r["incident_id"], r["title"]) for r in received] == [(incident_id, "router down")]
            notes = await timeline(app, incident_id, "notification")
            assert [e.details["status"] for e in notes] == ["retrying", "retrying", "retrying", "sent"]
            assert "503" in notes[0].message
    finally:
        await runner.cleanup()


async def test_a_dispatcher_dying_after_claiming_loses_no_page(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    """Claimed, then the process dies before sending: once the lease runs out, the page goes out."""
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    await three_tiers(app, tenant)
    await trigger(server, tenant, {"title": "x"})
    await app.escalator.tick()
    claimed = await app.dispatcher._claim()  # ...and this "process" dies here, before sending
    assert len(claimed) == 1 and channel.sent == []
    await advance(app, clock, 9)
    assert channel.sent == []  # still leased to the dead process
    await advance(app, clock, 2)  # the 10 s lease ran out
    assert channel.addresses == ["alice"]
    async with app.sessions() as session:
        row = await session.scalar(select(Notification))
    assert row is not None and (row.status, row.attempts) == ("sent", 2)
